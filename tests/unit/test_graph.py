"""Commands as declared graphs of stages: wiring is checked when a graph is declared, values flow by name, and the
diagram in docs/architecture.md is the code's."""

from __future__ import annotations

import re

import pytest
from frames import ROOT

from segscale.pipeline import GRAPHS
from segscale.pipeline.graph import Graph, Stage

ARCHITECTURE = ROOT / "docs" / "architecture.md"


def source(run) -> int:
    return 1


def double(run, number: int) -> int:
    return 2 * number


def plus_one(run, number: int) -> int:
    return number + 1


def collect(run, number: int, doubled: int) -> None:
    run.append((number, doubled))


def test_values_flow_by_name_and_a_stage_may_refine_what_it_needs():
    graph = Graph("demo", (Stage(source, "number"), Stage(double, "doubled"), Stage(plus_one, "number"),
                           Stage(collect)))
    seen: list = []
    assert graph.run(seen) == {"number": 2, "doubled": 2}
    assert seen == [(2, 2)]
    assert list(graph.edges()) == [("source", "double", "number"), ("source", "plus_one", "number"),
                                   ("plus_one", "collect", "number"), ("double", "collect", "doubled")]


def test_a_need_no_earlier_stage_gives_is_refused_when_declared():
    with pytest.raises(TypeError, match=r"demo: stage double needs \['number'\], which no earlier stage gives"):
        Graph("demo", (Stage(double, "doubled"), Stage(source, "number")))


def test_only_a_stage_that_needs_a_value_may_give_it_again():
    with pytest.raises(TypeError, match="stage source gives number, which an earlier stage gave"):
        Graph("demo", (Stage(source, "number"), Stage(source, "number")))


def test_flags_are_given_by_the_caller_and_checked():
    graph = Graph("demo", (Stage(double, "doubled"),), given=("number",))
    assert graph.run([], number=4) == {"number": 4, "doubled": 8}
    with pytest.raises(TypeError, match=r"demo takes \['number'\], got \[\]"):
        graph.run([])
    assert "flags([segscale demo flags])" in graph.mermaid()


def test_every_snapshot_command_has_a_graph():
    assert set(GRAPHS) == {"run", "validate", "features", "segment", "plan", "score", "train"}
    run = [stage.name for stage in GRAPHS["run"].stages]
    assert run[0] == "choose_models"  # MLflow and the champions are checked before any input is read
    assert run.index("train_models") < run.index("publish_features") < run.index("segment")


def test_the_architecture_doc_shows_the_graph_of_run_as_the_code_declares_it():
    text = ARCHITECTURE.read_text()
    shown = re.search(r"<!-- graph:run -->\n```mermaid\n(.*?)\n```\n<!-- /graph:run -->", text, re.DOTALL)
    assert shown, "docs/architecture.md lost its graph:run block"
    assert shown.group(1) == GRAPHS["run"].mermaid(), (
        "docs/architecture.md shows another graph than the code: replace its graph:run block with the output of "
        "`segscale.pipeline.GRAPHS[\"run\"].mermaid()`")
