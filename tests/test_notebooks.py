"""Every notebook's code runs against a warehouse written by segscale's table layer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from segscale.config import DeltaSettings
from segscale.tables import CommitMetadata, Warehouse

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs_on_a_published_warehouse(spark, tmp_path, notebook, capsys):
    warehouse = Warehouse(spark, str(tmp_path), DeltaSettings(backend="delta-rs"))
    for snapshot in (dt.date(2024, 5, 31), dt.date(2024, 6, 30)):
        df = spark.createDataFrame(
            [("A", snapshot, 3, 2, 40.0), ("B", snapshot, None, 0, 0.0), ("C", snapshot, 30, 1, 9.5)],
            "customer_id string, snapshot_date date, recency_days int, frequency long, monetary double")
        warehouse.write("customer_features", df, mode="replace_partition", replace={"snapshot_date": snapshot},
                        meta=CommitMetadata("nb-run", "features", "h", snapshot.isoformat()))
    cells = json.loads(notebook.read_text())["cells"]
    source = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    source = source.replace('Path("../warehouse")', f"Path({str(tmp_path)!r})")
    exec(compile(source, str(notebook), "exec"), {})  # noqa: S102 (the notebook is the code under test)
    out = capsys.readouterr().out
    assert "2024-06-30" in out and "nb-run" in out
