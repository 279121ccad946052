"""JSON-like records ↔ Parquet tables, losslessly, so a corpus shard can be Parquet or JSON lines.

Columns: ``id`` and ``text`` first (when present), then the other keys sorted. A key whose values
are all strings, all booleans, all integers (64-bit) or all floats becomes a typed column, where
null stands for ``None`` (or, when recorded in ``puyu.absent_when_null``, for a missing key); any
other key (objects, lists, mixed types, or both missing and ``None`` values) is a string column
holding each value as JSON, listed in ``puyu.json_columns`` (null: key missing). Both lists live
in the file's schema metadata, so other tools (pandas, DuckDB, datasets) read the typed columns
as they are and the JSON columns as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

JSON_COLUMNS = b"puyu.json_columns"
ABSENT_WHEN_NULL = b"puyu.absent_when_null"
_INT64 = (-(1 << 63), (1 << 63) - 1)
_MISSING = object()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _column_type(values: list[Any]) -> str | None:
    """'string' | 'bool_' | 'int64' | 'float64' (pyarrow type factories) for homogeneous non-null
    values, else None (JSON)."""
    present = [v for v in values if v is not None and v is not _MISSING]
    kinds = {type(v) for v in present}
    if not kinds:
        return "string"
    if kinds == {str}:
        return "string"
    if kinds == {bool}:
        return "bool_"
    if kinds == {int}:
        return "int64" if all(_INT64[0] <= v <= _INT64[1] for v in present) else None
    if kinds == {float}:
        return "float64"
    return None


def records_to_table(records: list[dict[str, Any]]) -> Any:
    """A ``pyarrow.Table`` holding ``records`` (see the module docstring for the mapping)."""
    import pyarrow as pa

    keys: set[str] = set()
    for rec in records:
        keys.update(rec)
    names = [k for k in ("id", "text") if k in keys] + sorted(keys - {"id", "text"})
    arrays, json_cols, absent_cols = [], [], []
    for name in names:
        values = [rec.get(name, _MISSING) for rec in records]
        missing = any(v is _MISSING for v in values)
        kind = _column_type(values)
        if kind is None or (missing and any(v is None for v in values)):
            json_cols.append(name)
            arrays.append(pa.array([None if v is _MISSING else _dumps(v) for v in values], pa.string()))
            continue
        if missing:
            absent_cols.append(name)
        arrays.append(pa.array([None if v is _MISSING else v for v in values], getattr(pa, kind)()))
    metadata = {JSON_COLUMNS: _dumps(json_cols).encode(), ABSENT_WHEN_NULL: _dumps(absent_cols).encode()}
    return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(metadata)


def table_records(table: Any) -> Iterator[dict[str, Any]]:
    """The records of a table written by ``records_to_table`` (any Parquet table: plain columns)."""
    meta = table.schema.metadata or {}
    json_cols = set(json.loads(meta.get(JSON_COLUMNS, b"[]")))
    absent_cols = set(json.loads(meta.get(ABSENT_WHEN_NULL, b"[]")))
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for row in range(table.num_rows):
        rec: dict[str, Any] = {}
        for name, values in columns.items():
            v = values[row]
            if v is None and (name in json_cols or name in absent_cols):
                continue
            rec[name] = json.loads(v) if name in json_cols else v
        yield rec


def write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    """One row group, zstd: the same records give the same bytes (for one pyarrow version)."""
    import pyarrow.parquet as pq

    pq.write_table(records_to_table(records), path, compression="zstd", row_group_size=max(len(records), 1))


def iter_parquet(path: Path | IO[bytes], batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
    """Records of a Parquet file, a batch of rows at a time (schema metadata applies to every batch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        schema = f.schema_arrow
        for batch in f.iter_batches(batch_size=batch_rows):
            yield from table_records(pa.Table.from_batches([batch], schema=schema))
