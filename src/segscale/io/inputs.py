"""Read the three input tables (Delta, Parquet or CSV directories) into typed DataFrames of the input contract
(segscale.contract). Missing optional columns arrive as typed nulls so every later stage sees one schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Literal

import pyarrow.fs as pafs
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from segscale.contract import CONTRACT
from segscale.errors import InputError, SegscaleError, describe_exception
from segscale.io.delta import DeltaStore
from segscale.transforms.conform import InputTables, conform

InputFormat = Literal["delta", "parquet", "csv"]
DELIMITERS = {"semicolons": ";", "tabs": "\t", "pipes": "|"}
REPLACEMENT = "\ufffd"  # what undecodable bytes become when Spark reads text as UTF-8


# Without a customers table, customers are derived from the transactions (segscale.transforms.validate).
REQUIRED_TABLES = ("transactions",)


def read_inputs(store: DeltaStore, input_dir: str, columns: Mapping[str, Mapping[str, str]] | None = None
                ) -> InputTables:
    """Read and type the input tables under `input_dir`, with each table's `columns` mapping (input.columns:
    contract column → the input's column or an SQL expression over its columns) applied first; stop before
    anything is written if one is unusable."""
    input_dir = input_dir.rstrip("/")
    columns = columns or {}
    found = {name: detect_format(f"{input_dir}/{name}") for name in CONTRACT}
    missing = [name for name in REQUIRED_TABLES if found[name] is None]
    if missing:
        raise InputError(f"required input tables {missing} not found under {input_dir} (expected a Delta, "
                         f"Parquet or CSV directory per table: {input_dir}/transactions/ and, optionally, "
                         f"customers/, interactions/ and treatments/; see docs/input-contract.md)")
    frames = {}
    for name, fmt in found.items():
        if fmt is None:
            continue
        where = f"{input_dir}/{name}"
        frames[name] = conform(name, mapped(name, _read(store, where, fmt), where, columns.get(name, {})), where)
    return InputTables(frames.get("customers"), frames["transactions"], frames.get("interactions"),
                       frames.get("treatments"))


def mapped(name: str, df: DataFrame, where: str, mapping: Mapping[str, str]) -> DataFrame:
    """The input with each mapped contract column computed from the input's own column of that name or, failing
    that, from a Spark SQL expression over its columns (`Quantity * Price`); a mapping that names a column the
    input lacks stops the run, naming the table, the column and the file.

    Expressions are analysed with Spark's lenient (non-ANSI) rules, as CSV text is read: text in arithmetic is
    taken as a number, and what does not parse becomes null for validation to report, rather than failing the
    run."""
    if not mapping:
        return df
    # Spark resolves names case-insensitively: an input column named like a mapped one (Quantity, quantity) goes.
    replaced = {column.lower() for column in mapping}
    kept = [F.col(_quoted(c)) for c in df.columns if c.lower() not in replaced]
    computed = []
    with _lenient(df.sparkSession):
        for column, source in mapping.items():
            try:
                expression = (F.col(_quoted(source)) if source in df.columns else F.expr(source)).alias(column)
                df.select(expression).schema  # noqa: B018 (analysed now, so a wrong name is reported with its file)
            except Exception as exc:  # Spark's AnalysisException and ParseException alike
                raise InputError(f"input table {name} at {where}: input.columns.{name}.{column} = {source!r} cannot "
                                 f"be read from it ({describe_exception(exc)}); its columns are {sorted(df.columns)},"
                                 f" in {_first_file(df, where)}") from None
            computed.append(expression)
        return df.select(*kept, *computed)


@contextlib.contextmanager
def _lenient(spark: SparkSession) -> Iterator[None]:
    """ANSI mode off while expressions are analysed (their evaluation mode is fixed then), restored after."""
    ansi = spark.conf.get("spark.sql.ansi.enabled")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    try:
        yield
    finally:
        spark.conf.set("spark.sql.ansi.enabled", ansi)


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def input_versions(input_dir: str) -> dict[str, int | None]:
    """The Delta version of each input table that is a Delta table (None for Parquet and CSV): lineage."""
    input_dir = input_dir.rstrip("/")
    found = {name: detect_format(f"{input_dir}/{name}") for name in CONTRACT}
    return {name: DeltaTable(f"{input_dir}/{name}").version() if fmt == "delta" else None
            for name, fmt in found.items() if fmt is not None}


def detect_format(path: str) -> InputFormat | None:
    """The format of an input table directory, or None if there is no such directory."""
    try:
        fs, root = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        info = fs.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            return None
        entries = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    except OSError as exc:
        raise InputError(f"cannot list input directory {path}: {exc}") from None
    names = {e.base_name for e in entries}
    if "_delta_log" in names:
        return "delta"
    files = [e for e in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if e.type == pafs.FileType.File]
    suffixes = {e.base_name.rsplit(".", 1)[-1].lower() for e in files if not e.base_name.startswith(("_", "."))}
    if "parquet" in suffixes:
        return "parquet"
    if "csv" in suffixes:
        return "csv"
    raise InputError(f"input directory {path} holds no Delta log, Parquet or CSV files")


def _read(store: DeltaStore, path: str, fmt: InputFormat) -> DataFrame:
    try:
        if fmt == "delta":
            return store.read(path)
        if fmt == "parquet":
            return store.spark.read.parquet(path)
        # CSV columns are read as text and typed by `conform`, so one bad value cannot fail the whole read.
        return _checked_csv(store.spark.read.option("header", True).option("inferSchema", False).csv(path), path)
    except SegscaleError:
        raise
    except Exception as exc:  # Spark reports unreadable files through several exception types
        raise InputError(f"cannot read the {fmt} input at {path}: {describe_exception(exc)}") from None


def _checked_csv(df: DataFrame, path: str) -> DataFrame:
    """Refuse CSV that is not comma-separated UTF-8, naming the file: Spark would read another delimiter as one
    column and undecodable bytes as U+FFFD without a word."""
    if len(df.columns) == 1:
        header = df.columns[0]
        found = [name for name, mark in DELIMITERS.items() if mark in header]
        if found:
            raise InputError(f"the CSV input {_first_file(df, path)} is not comma-separated: its header "
                             f"{header[:80]!r} holds {found[0]}; segscale reads comma-separated CSV with a header")
    text = [c for c, kind in df.dtypes if kind == "string"]
    undecodable = F.lit(any(REPLACEMENT in c for c in df.columns))
    for column in text:
        undecodable = undecodable | F.col(column).contains(REPLACEMENT)
    hit = df.where(undecodable).select(F.input_file_name().alias("file")).limit(1).collect()  # small: one row
    if hit:
        raise InputError(f"the CSV input {hit[0]['file'] or _first_file(df, path)} is not UTF-8 text (it has bytes "
                         f"that do not decode, e.g. Latin-1 or Windows-1252 text); convert it to UTF-8")
    return df


def _first_file(df: DataFrame, path: str) -> str:
    files = df.inputFiles()
    return files[0] if files else path


