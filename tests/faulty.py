"""`segscale` with real faults injected from outside the library: `python tests/faulty.py FAULT[,FAULT...] ARGS...`
runs the command ARGS in this process after replacing seams of `segscale.io.delta` (test_faults.py runs it).

FAULT is `kill-worker:TABLE` (the first attempt of the first task writing TABLE kills its Python worker after it has
written part of its file; Spark must retry the task), `exit-before-commit:TABLE` (the process exits with 137, as
if killed, after TABLE's data files are written and before its commit) or `wait-before-commit:TABLE` (with TABLE's
data files written, the process creates TABLE.waiting in its working directory and commits only once TABLE.go
appears there: another writer can be run in between)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from segscale.cli import main
from segscale.io.delta import rs_writer


def _table_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def exit_before_commit(table: str) -> None:
    seam = rs_writer.before_commit

    def before_commit(uri: str, write_id: str) -> None:
        if _table_of(uri) == table:
            os._exit(137)
        seam(uri, write_id)

    rs_writer.before_commit = before_commit


def wait_before_commit(table: str) -> None:
    seam = rs_writer.before_commit

    def before_commit(uri: str, write_id: str) -> None:
        if _table_of(uri) == table:
            Path(f"{table}.waiting").touch()
            deadline = time.monotonic() + 600
            while not Path(f"{table}.go").exists():
                if time.monotonic() > deadline:
                    os._exit(124)
                time.sleep(0.05)
        seam(uri, write_id)

    rs_writer.before_commit = before_commit


def kill_worker(table: str) -> None:
    write_files = rs_writer.write_files  # runs on the executors: this wrapper is shipped there by value

    def dying(batches: Iterator) -> Iterator:
        for number, batch in enumerate(batches):
            if number == 1:
                os._exit(1)  # the first batch is in the task's open file: it is left half-written
            yield batch
        os._exit(1)

    def write_files_then_die(batches: Iterator, plan: rs_writer.FilePlan) -> Iterator:
        from pyspark import TaskContext

        context = TaskContext.get()
        first = context is not None and context.partitionId() == 0 and context.attemptNumber() == 0
        return write_files(dying(batches) if first and _table_of(plan.table_uri) == table else batches, plan)

    rs_writer.write_files = write_files_then_die


FAULTS = {"exit-before-commit": exit_before_commit, "kill-worker": kill_worker,
          "wait-before-commit": wait_before_commit}

if __name__ == "__main__":
    for fault in sys.argv[1].split(","):
        kind, _, table = fault.partition(":")
        FAULTS[kind](table)
    sys.exit(main(sys.argv[2:]))
