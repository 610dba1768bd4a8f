"""Delta file statistics (per-column min, max and null count) gathered while an executor writes a data file, in
the log's JSON format, so readers can skip files."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# Longer string min/max values are left out of file statistics instead of being truncated.
MAX_STAT_STRING = 32


class FileStats:
    """Running per-column min, max and null count, in the Delta log's statistics format."""

    def __init__(self, schema: pa.Schema):
        self.columns = [f for f in schema if _stat_kind(f.type) is not None or not pa.types.is_nested(f.type)]
        self.minimum: dict[str, Any] = {}
        self.maximum: dict[str, Any] = {}
        self.null_count: dict[str, int] = {f.name: 0 for f in self.columns}
        self.no_min_max: set[str] = set()

    def update(self, batch: pa.RecordBatch) -> None:
        for f in self.columns:
            column = batch[f.name]
            self.null_count[f.name] += column.null_count
            if _stat_kind(f.type) is None or f.name in self.no_min_max:
                continue
            if pa.types.is_floating(f.type):
                column = pc.filter(column, pc.is_finite(column))
            low, high = pc.min_max(column).values()
            low, high = low.as_py(), high.as_py()
            if low is None:
                continue
            if isinstance(low, str) and max(len(low), len(high)) > MAX_STAT_STRING:
                self.no_min_max.add(f.name)
                continue
            self.minimum[f.name] = low if f.name not in self.minimum else min(self.minimum[f.name], low)
            self.maximum[f.name] = high if f.name not in self.maximum else max(self.maximum[f.name], high)

    def to_json(self, rows: int) -> str:
        keep = [n for n in self.minimum if n not in self.no_min_max]
        return json.dumps({
            "numRecords": rows,
            "minValues": {n: _stat_value(self.minimum[n], round_up=False) for n in keep},
            "maxValues": {n: _stat_value(self.maximum[n], round_up=True) for n in keep},
            "nullCount": self.null_count,
        })


def _stat_kind(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return "number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "time"
    return None


def _stat_value(value: Any, round_up: bool) -> Any:
    if isinstance(value, dt.datetime):
        # Delta statistics hold milliseconds: round the maximum up so the bound still holds.
        value = value.astimezone(dt.UTC)
        if round_up and value.microsecond % 1000:
            value += dt.timedelta(microseconds=1000 - value.microsecond % 1000)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


