"""A live display of the pipeline's stages on stderr while a command runs: a spinner and the elapsed time for the
running stage, the seconds of each finished one. It follows the stage start and end records that
`segscale.pipeline.context` logs, and appears only when stderr is a terminal, so logs and CI stay plain."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from segscale.pipeline import context

START = "stage %s: start"  # the formats of context.Run.stage's records
END = "stage %s: end"


def stage_event(record: logging.LogRecord) -> tuple[str, str] | None:
    """("start" | "end", stage name) for a stage record of the pipeline context's logger, else None."""
    if record.name != context.log.name or not isinstance(record.msg, str) or not record.args:
        return None
    if record.msg == START:
        return "start", str(record.args[0])
    if record.msg.startswith(END):
        return "end", str(record.args[0])
    return None


class StageProgress(logging.Handler):
    """A row per stage name: it spins while the stage runs and keeps its time once done. A stage that runs again
    (the next snapshot of a backfill) starts its row over."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = stage_event(record)
        if event is None:
            return
        kind, name = event
        task = self.tasks.get(name)
        if kind == "start":
            if task is None:
                self.tasks[name] = self.progress.add_task(name, total=None)
            else:
                self.progress.reset(task, total=None)
        elif task is not None:
            self.progress.update(task, total=1, completed=1)


def stderr_console() -> Console | None:
    """A console on stderr when stderr is a terminal, else None."""
    console = Console(stderr=True, highlight=False)
    return console if console.is_terminal else None


@contextlib.contextmanager
def shown(console: Console | None, level: int) -> Iterator[StageProgress | None]:
    """Around a command: with a console, the stage display on it, and log records printed above the display
    (through rich, at `level`) instead of across it; without one, nothing changes."""
    if console is None:
        yield None
        return
    root = logging.getLogger()
    logs = RichHandler(console=console, level=level, show_path=False, markup=False, rich_tracebacks=False)
    progress = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=console, transient=True)
    stages = StageProgress(progress)
    # The plain stream handlers of logging.basicConfig would write across the live display.
    plain = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr,
                                                                                           sys.__stderr__)]
    for handler in plain:
        root.removeHandler(handler)
    root.addHandler(logs)
    context.log.addHandler(stages)
    try:
        with progress:
            yield stages
    finally:
        context.log.removeHandler(stages)
        root.removeHandler(logs)
        for handler in plain:
            root.addHandler(handler)
