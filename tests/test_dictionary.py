"""The data dictionary in docs/tables.md describes every column of every published table, with its type."""

from __future__ import annotations

import re
from pathlib import Path

from deltalake import DeltaTable

from segscale.analyst.sql import published_tables

DICTIONARY = Path(__file__).resolve().parents[1] / "docs" / "tables.md"
TYPES = {"string": "string", "date": "date", "integer": "int", "long": "long", "double": "double",
         "boolean": "boolean", "timestamp": "timestamp"}


def documented(text: str) -> dict[str, dict[str, str]]:
    """Table → column → type, from the `### `table`` sections of the dictionary and their column tables."""
    dictionary = text.split("\n## Data dictionary\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    for section in re.split(r"\n### ", dictionary)[1:]:
        name = re.match(r"`(\w+)`", section).group(1)
        columns = tables.setdefault(name, {})
        for line in section.splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not line.startswith("| `") or len(cells) < 3:
                continue
            names = re.findall(r"`(\w+)`", cells[0])
            types = [t.strip() for t in cells[1].split(",")]
            types = types * len(names) if len(types) == 1 else types
            assert len(types) == len(names), f"{name}: {cells[0]} has {len(names)} columns but types {cells[1]}"
            for column, kind in zip(names, types, strict=True):
                assert column not in columns, f"{name}.{column} is described twice"
                columns[column] = kind
    return tables


def type_name(kind) -> str:
    """The dictionary's name of a Delta type: `long`, `array<string>`, ..."""
    if hasattr(kind, "element_type"):
        return f"array<{type_name(kind.element_type)}>"
    return TYPES.get(kind.type, kind.type)


def published_schemas(root: str) -> dict[str, dict[str, str]]:
    return {name: {field.name: type_name(field.type) for field in DeltaTable(uri).schema().fields}
            for name, uri in published_tables(root).items()}


def gaps(published: dict[str, dict[str, str]], described: dict[str, dict[str, str]]) -> list[str]:
    found = [f"table {t} is not in the dictionary" for t in sorted(set(published) - set(described))]
    for table, columns in published.items():
        known = described.get(table, {})
        found += [f"{table}.{c} ({kind}) is not described" for c, kind in columns.items() if c not in known]
        found += [f"{table}.{c} is {kind}, the dictionary says {known[c]}" for c, kind in columns.items()
                  if c in known and known[c] != kind]
        found += [f"{table}.{c} is described but not published" for c in known if c not in columns]
    return found


def test_every_published_column_is_in_the_dictionary(two_snapshots):
    settings, _, _, _ = two_snapshots
    published = published_schemas(settings.paths.warehouse)
    assert set(published) >= {"quarantine", "customer_features", "customer_scores", "segment_migration",
                              "retention_plan", "retention_summary", "runs"}
    assert gaps(published, documented(DICTIONARY.read_text())) == []


def test_the_check_finds_an_undocumented_or_mistyped_column(two_snapshots):
    settings, _, _, _ = two_snapshots
    published = published_schemas(settings.paths.warehouse)
    text = DICTIONARY.read_text()
    without_clv = re.sub(r"\n\| `clv` \|[^\n]*", "", text)
    assert gaps(published, documented(without_clv)) == ["customer_scores.clv (double) is not described"]
    retyped = text.replace("| `selected` | boolean |", "| `selected` | string |")
    assert gaps(published, documented(retyped)) == ["retention_plan.selected is boolean, the dictionary says string"]


def test_every_section_gives_partitioning_cadence_and_commit_metadata():
    text = DICTIONARY.read_text().split("\n## Data dictionary\n", 1)[1]
    for section in re.split(r"\n### ", text)[1:]:
        name = section.split("`")[1]
        for heading in ("**Partitioned by:**", "**Written by:**", "**Cadence:**", "**Commit metadata:**"):
            assert heading in section, f"{name}: {heading} is missing"
