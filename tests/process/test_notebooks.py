"""The analyst notebooks (jupytext percent scripts) run top to bottom in a real Jupyter kernel against a warehouse
the pipeline published."""

from __future__ import annotations

import jupytext
import pytest
from frames import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_there_are_the_two_analyst_notebooks():
    assert {n.stem for n in NOTEBOOKS} >= {"segment_exploration", "churn_retention_review"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(two_snapshots, path, tmp_path, monkeypatch):
    settings, _, _, _ = two_snapshots
    monkeypatch.setenv("SEGSCALE_WAREHOUSE", settings.paths.warehouse)  # the kernel inherits the environment
    notebook = jupytext.read(path)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no chart was drawn"
    assert any("text/html" in o.get("data", {}) for o in outputs), "no table was shown"
