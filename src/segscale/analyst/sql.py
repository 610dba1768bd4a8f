"""Read-only SQL over the published tables (`segscale sql`, docs/querying.md).

DuckDB scans each Delta table the query names through delta-rs as an Arrow dataset, so projections and filters
are pushed down: a query on one snapshot reads only that partition's files. Nothing here writes: only SELECT
(and EXPLAIN) statements run, on an in-memory connection that cannot reach other files once the tables are in.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import IO

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from deltalake import DeltaTable
from pyarrow import fs as pafs

from segscale import catalog
from segscale.config import DeltaSettings
from segscale.errors import InputError, first_line, raise_if_storage_unreachable
from segscale.io.delta import Warehouse, absolute_uri, open_table
from segscale.io.delta.log import is_table

READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
FORMATS = ("table", "csv", "json", "parquet")


def published_tables(root: str) -> dict[str, str]:
    """Name → URI of every catalog table (segscale.catalog) published under the warehouse root."""
    base = absolute_uri(root)
    filesystem, path = pafs.FileSystem.from_uri(base)
    try:
        found = filesystem.get_file_info(path).type == pafs.FileType.Directory
    except OSError as exc:
        raise_if_storage_unreachable(exc, base)
        raise
    if not found:
        raise InputError(f"warehouse {root} does not exist")
    tables = {table.name: f"{base}/{table.name}" for table in catalog.TABLES}
    return {name: uri for name, uri in sorted(tables.items()) if is_table(uri)}


def published_snapshots(root: str, table: catalog.Table = catalog.CUSTOMER_SCORES, *, run_id: str | None = None,
                        as_of: dt.datetime | None = None) -> list[dt.date]:
    """The snapshot dates of `table` readers see (`visible_tables`), oldest first; InputError when the table is not
    published."""
    return snapshots_in(root, visible_tables(root, [table.name], run_id=run_id, as_of=as_of), table)


def snapshots_in(root: str, tables: dict[str, DeltaTable], table: catalog.Table = catalog.CUSTOMER_SCORES
                 ) -> list[dt.date]:
    """The snapshot dates of `table` among loaded `tables`, oldest first; InputError when it is not among them."""
    if table.name not in tables:
        raise InputError(f"warehouse {root} has no {table} table: run segscale run first")
    con = connect({table.name: tables[table.name]})
    try:
        return [day for (day,) in con.sql(f"SELECT DISTINCT snapshot_date FROM {table} ORDER BY 1").fetchall()]
    finally:
        con.close()


def check_read_only(sql: str) -> None:
    """InputError unless `sql` is exactly one SELECT or EXPLAIN statement."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise InputError(f"{first_line(exc)}\nquery: {sql}") from None
    if len(statements) != 1:
        raise InputError(f"segscale sql runs one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind not in READ_ONLY:
        raise InputError(f"segscale sql is read-only: {kind.name} statements are refused (only SELECT and "
                         f"EXPLAIN run); query: {sql}")


def run_query(root: str, sql: str, *, version: int | None = None, as_of: dt.datetime | None = None,
              run_id: str | None = None, snapshot: dt.date | None = None) -> pa.Table:
    """The query's result. Every published table is visible under its own name as the newest completed run left
    it (`visible_tables`), or as run `run_id` or the last run completed by `as_of` did, or at raw Delta `version`
    N of each; with `snapshot`, tables partitioned by snapshot_date show only that snapshot."""
    check_read_only(sql)
    # The tables the query names (a name inside a string literal only costs an extra registration).
    named = [t.name for t in catalog.named_in(sql)]
    tables = visible_tables(root, named, version=version, as_of=as_of, run_id=run_id)
    con = connect(tables, snapshot=snapshot)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        known = f" (published tables: {', '.join(published_tables(root)) or 'none'})" \
            if isinstance(exc, duckdb.CatalogException) else ""
        raise InputError(f"{first_line(exc)}{known}\nquery: {sql}") from None
    finally:
        con.close()


def visible_tables(root: str, names: Sequence[str] | None = None, *, version: int | None = None,
                   as_of: dt.datetime | None = None, run_id: str | None = None) -> dict[str, DeltaTable]:
    """Every published table (of `names`, if given), loaded at the version readers are to see: the version the
    newest succeeded run recorded in `runs.table_versions` (so a run that failed between two commits is never
    seen half-published), or the one run `run_id` recorded, or the newest run completed at or before `as_of`. A
    table no completed run published is not visible. `runs` itself is read as it is (as of `as_of`). With
    `version`, each table at that raw Delta version instead. A warehouse whose runs recorded no versions (written
    by an earlier segscale) shows each table as it is, or as of `as_of`."""
    tables = {name: uri for name, uri in published_tables(root).items() if names is None or name in names}
    if version is not None:
        return {name: open_table(uri, version) for name, uri in tables.items()}
    recorded = Warehouse(None, root, DeltaSettings(backend="delta-rs")).published_versions(run_id, as_of)
    if recorded is None:
        return {name: open_table(uri, None, as_of) for name, uri in tables.items()}
    return {name: open_table(uri, recorded[name]) if name != catalog.RUNS.name else open_table(uri, None, as_of)
            for name, uri in tables.items() if name in recorded or name == catalog.RUNS.name}


def connect(tables: dict[str, DeltaTable], *, snapshot: dt.date | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with each of `tables` (name → a loaded Delta version) as a view over its
    files, and only `snapshot` of the partitioned ones when given. It cannot read or write any other file. The
    caller closes it."""
    con = duckdb.connect()
    for name, table in tables.items():
        dataset = table.to_pyarrow_dataset()
        con.register(f"{name}__delta", dataset)
        where = ""
        if snapshot is not None and "snapshot_date" in dataset.schema.names:
            where = f" WHERE snapshot_date = DATE '{snapshot.isoformat()}'"
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM "{name}__delta"{where}')
    con.execute("SET enable_external_access = false")  # no file reads or writes beyond the tables above
    con.execute("SET lock_configuration = true")
    return con


def write_result(result: pa.Table, fmt: str, out: str | None = None, stream: IO[str] | None = None) -> None:
    """The result as an aligned text table, CSV, JSON (an array of objects) or Parquet (needs `out`)."""
    if fmt == "parquet":
        if not out:
            raise InputError("--format parquet needs --out FILE")
        pq.write_table(result, out)
        return
    if out:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            write_result(result, fmt, None, handle)
        return
    stream = stream or sys.stdout
    if fmt == "csv":
        sink = pa.BufferOutputStream()
        pacsv.write_csv(result, sink)
        stream.write(sink.getvalue().to_pybytes().decode("utf-8"))
    elif fmt == "json":
        json.dump(result.to_pylist(), stream, default=str, ensure_ascii=False, indent=1)
        stream.write("\n")
    else:
        stream.write(aligned(result) + "\n")


def aligned(result: pa.Table) -> str:
    """Columns padded to their widest value; numbers right-aligned, nulls shown as NULL."""
    rows = result.to_pylist()
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
               for f in result.schema]

    def text(value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    cells = [[text(row[name]) for name in result.column_names] for row in rows]
    widths = [max([len(name), *(len(r[i]) for r in cells)]) for i, name in enumerate(result.column_names)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    lines = [line(result.column_names), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in cells]
    lines.append(f"({len(rows):,} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)
