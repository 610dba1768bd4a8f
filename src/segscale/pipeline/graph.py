"""Commands as declared graphs of stages.

A stage is a function `fn(run, **needs) -> value`: its parameters after `run` name the values it needs, and
`gives` names the value it produces for the stages after it. A command is the ordered list of its stages; the graph
checks, when it is declared, that every need is given by an earlier stage or by the caller, so a command that
cannot run does not import. A stage may refine a value it needs (`train_models` gives `models` back with the
models it trained). `mermaid` draws a graph, and docs/architecture.md shows the one of `run`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from segscale.pipeline.context import Run


@dataclass(frozen=True)
class Stage:
    fn: Callable[..., Any]
    gives: str | None = None

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(list(inspect.signature(self.fn).parameters)[1:])

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.fn) or "").split("\n\n")[0].replace("\n", " ")


@dataclass(frozen=True)
class Graph:
    command: str
    stages: tuple[Stage, ...]
    given: tuple[str, ...] = ()  # values the caller passes in (flags such as `train`)

    def __post_init__(self) -> None:
        known = set(self.given)
        for stage in self.stages:
            missing = [need for need in stage.needs if need not in known]
            if missing:
                raise TypeError(f"{self.command}: stage {stage.name} needs {missing}, which no earlier stage gives")
            if stage.gives in known and stage.gives not in stage.needs:
                raise TypeError(f"{self.command}: stage {stage.name} gives {stage.gives}, which an earlier stage "
                                f"gave; only a stage that needs a value may refine it")
            if stage.gives:
                known.add(stage.gives)

    def run(self, run: Run, **given: Any) -> dict[str, Any]:
        """Run the stages in order, each with the values it needs; the values they gave."""
        unknown = set(given) - set(self.given)
        if unknown or set(self.given) - set(given):
            raise TypeError(f"{self.command} takes {sorted(self.given)}, got {sorted(given)}")
        values = dict(given)
        for stage in self.stages:
            value = stage.fn(run, **{need: values[need] for need in stage.needs})
            if stage.gives:
                values[stage.gives] = value
        return values

    def edges(self) -> Iterable[tuple[str, str, str]]:
        """(producer, consumer, value) for every value a stage passes to a later one; the caller's values come
        from `flags`."""
        producer = {name: "flags" for name in self.given}
        for stage in self.stages:
            for need in stage.needs:
                yield producer[need], stage.name, need
            if stage.gives:
                producer[stage.gives] = stage.name

    def mermaid(self) -> str:
        """The graph as a Mermaid flowchart: stages as boxes, values on the arrows."""
        lines = ["flowchart TD"]
        if self.given:
            lines.append(f"    flags([segscale {self.command} flags])")
        lines += [f"    {stage.name}[{stage.name.replace('_', ' ')}]" for stage in self.stages]
        lines += [f"    {a} -->|{value}| {b}" for a, b, value in self.edges()]
        return "\n".join(lines)
