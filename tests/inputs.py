"""Small input tables in the shape users bring, built with numpy rather than segscale's generator: a purchase
process with dropout, returns, optional attributes and interactions, written as CSV, Parquet or Delta."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import write_deltalake

REQUIRED = {
    "customers": ["customer_id", "signup_date"],
    "transactions": ["transaction_id", "customer_id", "ts", "amount", "transaction_type"],
}


@dataclass(frozen=True)
class Base:
    """How to draw a base: customers signing up over [start, end], buying at a rate that varies per customer
    until they drop out after a purchase with `dropout` probability."""

    customers: int
    start: dt.date = dt.date(2023, 1, 1)
    end: dt.date = dt.date(2024, 12, 31)
    buyers_share: float = 0.85
    mean_days_between: float = 45.0
    dropout: float = 0.15
    return_share: float = 0.05
    max_purchases: int | None = None
    seed: int = 1


def draw(base: Base) -> dict[str, pd.DataFrame]:
    """customers, transactions and interactions frames with every contract column."""
    rng = np.random.default_rng(base.seed)
    days = (base.end - base.start).days + 1
    ids = [f"c{i:05d}" for i in range(base.customers)]
    signup = rng.integers(0, days, size=base.customers)
    customers = pd.DataFrame({
        "customer_id": ids,
        "signup_date": [(base.start + dt.timedelta(days=int(d))).isoformat() for d in signup],
        "region": rng.choice(["north", "south", "east"], size=base.customers),
        "city_tier": rng.integers(1, 5, size=base.customers),
        "channel": rng.choice(["online", "store", "app"], size=base.customers),
        "birth_year": rng.integers(1950, 2005, size=base.customers),
        "gender": rng.choice(["F", "M", "U"], size=base.customers),
    })
    rows, interactions = [], []
    for i, cid in enumerate(ids):
        if rng.random() > base.buyers_share:
            continue
        rate = rng.gamma(2.0, 1.0 / (2.0 * base.mean_days_between))
        day, count = float(signup[i]), 0
        while True:
            day += rng.exponential(1.0 / rate) if count else rng.exponential(10.0)
            if day >= days or (base.max_purchases is not None and count >= base.max_purchases):
                break
            count += 1
            ts = pd.Timestamp(base.start) + pd.Timedelta(days=day)
            amount = round(float(rng.lognormal(3.5, 0.6)), 2)
            kind = "return" if rng.random() < base.return_share else "purchase"
            rows.append((f"t{len(rows):07d}", cid, ts.strftime("%Y-%m-%dT%H:%M:%SZ"), amount,
                         int(rng.integers(1, 4)), rng.choice(["books", "music", "toys"]),
                         rng.choice(["online", "store", "app"]), kind))
            if rng.random() < 0.3:
                interactions.append((f"i{len(interactions):07d}", cid, ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     rng.choice(["service_call", "complaint", "survey"]),
                                     round(float(rng.uniform(0, 5)), 2), int(rng.integers(1, 6))))
            if rng.random() < base.dropout:
                break
    transactions = pd.DataFrame(rows, columns=["transaction_id", "customer_id", "ts", "amount", "quantity",
                                               "category", "channel", "transaction_type"])
    return {"customers": customers, "transactions": transactions,
            "interactions": pd.DataFrame(interactions, columns=["interaction_id", "customer_id", "ts", "kind", "cost",
                                                                "satisfaction"])}


def write(tables: dict[str, pd.DataFrame], root: Path, fmt: str = "csv") -> Path:
    """Each frame as a table directory under `root` (CSV with a header, Parquet, or a Delta table)."""
    for name, frame in tables.items():
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            frame.to_csv(target / "part-0.csv", index=False)
        elif fmt == "parquet":
            pq.write_table(_typed(frame), target / "part-0.parquet")
        else:
            write_deltalake(str(target), _typed(frame), mode="overwrite")
    return root


def _typed(frame: pd.DataFrame) -> pa.Table:
    """Timestamps and dates as Arrow types (what a Parquet or Delta export holds), text and numbers as they are."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    columns = []
    for field in table.schema:
        column = table[field.name]
        if field.name == "ts":
            column = pa.array(pd.to_datetime(frame["ts"], utc=True), pa.timestamp("us", tz="UTC"))
        elif field.name == "signup_date":
            column = pa.array(pd.to_datetime(frame["signup_date"]).dt.date, pa.date32())
        elif pa.types.is_null(field.type):
            column = column.cast(pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.schema.names)
