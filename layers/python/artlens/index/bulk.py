"""Bulk loading: many rows of one model version, rows first and the HNSW index afterwards.

Inserting a million rows one batch at a time into a table with an HNSW index pays a graph
insertion per row; building the graph once over rows that are already there is several times
faster, and the build goes faster still when its graph fits in `maintenance_work_mem` (RDS: the
parameter group gives it a quarter of memory, infra/constructs/database.py; here it is set for
the build's own transaction). So `bulk_load`:

  1. drops the version's HNSW index (artlens.index.embeddings.version_index_name), under the
     schema lock, in a transaction of its own (a brief lock, not one held through the load);
  2. streams the rows with COPY in binary format (pgvector's binary `vector`: dimension, unused,
     float4 values, big-endian), CHUNK_ROWS rows per transaction, through a temporary table and
     `INSERT ... ON CONFLICT DO NOTHING`, so that a picture (or key) already indexed for the
     version is skipped rather than failing the load, and a rerun after an interruption resumes;
  3. builds the index again with the same DDL as registration (`version_index_sql`), with
     `maintenance_work_mem` set for that transaction, then ANALYZE; reports the build time and
     the index size.

While it runs, queries of that version scan without an index: load a version that is not
current yet (a new model, a restore), then switch to it. `build_halfvec_index` adds the
half-precision option the k-NN bench measures (bench/million.py): an expression index over
`embedding::halfvec(D)` with `halfvec_cosine_ops`, half the size of the float4 graph.
"""

from __future__ import annotations

import io
import logging
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
from psycopg2 import sql

from artlens.index.database import Cursor, fetch_value
from artlens.index.embeddings import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    EmbeddingStore,
    ImageRow,
    checked_dimension,
    version_index_name,
    version_index_sql,
)
from artlens.index.migrations import schema_lock

logger = logging.getLogger(__name__)

CHUNK_ROWS = 50_000  # one COPY + one transaction; a million rows never sit in one buffer
DEFAULT_MAINTENANCE_WORK_MEM = "1GB"
# The columns every schema has (001-004), in COPY order; `probabilities` (a later migration)
# is added when the table has it.
BASE_COLUMNS = ("key", "sha256", "label", "probability", "embedding", "model_version", "width",
                "height", "size_bytes")
_FLOAT4_OID = 700  # pg_type oid of real, the element type of probabilities real[]
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_MEMORY_SETTING = ("kB", "MB", "GB")


@dataclass(frozen=True)
class BulkLoadReport:
    model_version: str
    rows: int  # offered
    inserted: int
    skipped: int  # already indexed for the version (same picture or same key)
    load_s: float  # COPY + insert, all chunks
    build_s: float  # the HNSW build alone
    index_bytes: int  # pg_relation_size of the version's HNSW index
    maintenance_work_mem: str
    m: int
    ef_construction: int


def _checked_memory(value: str) -> str:
    """A PostgreSQL memory setting such as 512MB or 2GB (set through set_config, never
    formatted into SQL; checked anyway so a typo fails before the load, not after it)."""
    number = value[:-2] if value.endswith(_MEMORY_SETTING) else ""
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"maintenance_work_mem must look like 512MB or 2GB, got {value!r}")
    return value


def _field(data: bytes | None) -> bytes:
    return struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data


def _text(value: str) -> bytes:
    return _field(value.encode("utf-8"))


def _vector(embedding: np.ndarray, dim: int) -> bytes:
    """pgvector's binary `vector`: int16 dimension, int16 unused, float4 values (network
    order). NaN and infinity are refused as EmbeddingStore refuses them."""
    values = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if values.shape != (dim,):
        raise ValueError(f"embedding must have {dim} values, got {values.shape[0]}")
    if not np.all(np.isfinite(values)):
        raise ValueError("embedding contains NaN or infinity")
    return _field(struct.pack("!hh", dim, 0) + values.astype(">f4").tobytes())


def _float4_array(values: Sequence[float] | None) -> bytes:
    if values is None:
        return _field(None)
    items = [float(v) for v in values]
    body = struct.pack("!iiiii", 1, 0, _FLOAT4_OID, len(items), 1) + b"".join(
        struct.pack("!if", 4, v) for v in items
    )
    return _field(body)


def copy_buffer(rows: Sequence[ImageRow], version: str, dim: int,
                with_probabilities: bool) -> io.BytesIO:
    """One binary COPY stream of `rows` (BASE_COLUMNS, then probabilities when asked)."""
    buf = io.BytesIO()
    buf.write(_COPY_HEADER)
    fields = struct.pack("!h", len(BASE_COLUMNS) + int(with_probabilities))
    for row in rows:
        if row.model_version != version:
            raise ValueError(f"row {row.key!r} is of version {row.model_version!r}, "
                             f"not {version!r}")
        buf.write(fields)
        buf.write(_text(row.key))
        buf.write(_text(row.sha256))
        buf.write(_text(row.label))
        buf.write(_field(struct.pack("!f", float(row.probability))))
        buf.write(_vector(row.embedding, dim))
        buf.write(_text(version))
        for number in (row.width, row.height, row.size_bytes):
            buf.write(_field(struct.pack("!i", int(number))))
        if with_probabilities:
            buf.write(_float4_array(row.probabilities))
    buf.write(_COPY_TRAILER)
    buf.seek(0)
    return buf


def _chunks(rows: Iterable[ImageRow], size: int) -> Iterator[list[ImageRow]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _has_probabilities(cur: Cursor) -> bool:
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = 'images' AND column_name = 'probabilities')"
    )
    return bool(fetch_value(cur))


def drop_version_index(store: EmbeddingStore, version: str) -> None:
    def work(cur: Cursor) -> None:
        schema_lock(cur)
        cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
            sql.Identifier(version_index_name(version))))

    store.database.transaction(work)


def copy_rows(store: EmbeddingStore, version: str, rows: Iterable[ImageRow],
              chunk_rows: int = CHUNK_ROWS) -> tuple[int, int]:
    """COPY `rows` into images for `version` (registered); (offered, inserted)."""
    _, dim = store.version_and_dimension(version)
    with_probabilities = store.database.transaction(_has_probabilities)
    columns = BASE_COLUMNS + (("probabilities",) if with_probabilities else ())
    column_list = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    offered = inserted = 0
    for chunk in _chunks(rows, chunk_rows):
        buf = copy_buffer(chunk, version, dim, with_probabilities)

        def work(cur: Cursor, buf: io.BytesIO = buf) -> int:
            buf.seek(0)  # Database.transaction retries once on a fresh connection
            # Staging: the loaded columns with the target's types, no constraints, dropped at
            # commit; conflicts are then skipped by the INSERT, not fatal to the COPY.
            cur.execute(sql.SQL(
                "CREATE TEMP TABLE artlens_bulk ON COMMIT DROP AS SELECT {} FROM images"
                " WITH NO DATA"
            ).format(column_list))
            cur.copy_expert(
                sql.SQL("COPY artlens_bulk ({}) FROM STDIN WITH (FORMAT binary)")
                .format(column_list).as_string(cur),
                buf,
            )
            cur.execute(sql.SQL(
                "INSERT INTO images ({columns}) SELECT {columns} FROM artlens_bulk"
                " ON CONFLICT DO NOTHING"
            ).format(columns=column_list))
            return int(cur.rowcount)

        inserted += store.database.transaction(work)
        offered += len(chunk)
    return offered, inserted


def build_version_index(
    store: EmbeddingStore, version: str, *, m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    maintenance_work_mem: str = DEFAULT_MAINTENANCE_WORK_MEM,
) -> tuple[float, int]:
    """(Re)build the version's HNSW index with `maintenance_work_mem` for the build's own
    transaction, then ANALYZE; (seconds the build took, index bytes)."""
    _, dim = store.version_and_dimension(version)
    built = _build_index(store, version_index_name(version),
                         version_index_sql(version, dim, m, ef_construction),
                         maintenance_work_mem)
    store.database.transaction(lambda cur: cur.execute("ANALYZE images"))
    return built


def _build_index(
    store: EmbeddingStore, name: str, create: sql.Composable, maintenance_work_mem: str
) -> tuple[float, int]:
    """Drop and create one index in a transaction of its own, with `maintenance_work_mem` set
    for that transaction only; (seconds the CREATE took, index bytes)."""
    memory = _checked_memory(maintenance_work_mem)

    def work(cur: Cursor) -> float:
        schema_lock(cur)
        cur.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
        cur.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        started = time.perf_counter()
        cur.execute(create)
        return time.perf_counter() - started

    return store.database.transaction(work), index_bytes(store, name)


def index_bytes(store: EmbeddingStore, index_name: str) -> int:
    def work(cur: Cursor) -> int:
        cur.execute("SELECT COALESCE(pg_relation_size(to_regclass(%s)), 0)", (index_name,))
        return int(fetch_value(cur))

    return store.database.read(work)


def bulk_load(
    store: EmbeddingStore,
    version: str,
    rows: Iterable[ImageRow],
    *,
    m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    maintenance_work_mem: str = DEFAULT_MAINTENANCE_WORK_MEM,
    chunk_rows: int = CHUNK_ROWS,
) -> BulkLoadReport:
    """Load `rows` (all of `version`, which must be registered) with the index dropped, then
    build it; see the module's docstring."""
    _checked_memory(maintenance_work_mem)
    store.version_and_dimension(version)  # NotFound before anything is dropped
    drop_version_index(store, version)
    started = time.perf_counter()
    offered, inserted = copy_rows(store, version, rows, chunk_rows)
    load_s = time.perf_counter() - started
    build_s, size = build_version_index(store, version, m=m, ef_construction=ef_construction,
                                        maintenance_work_mem=maintenance_work_mem)
    report = BulkLoadReport(
        model_version=version, rows=offered, inserted=inserted, skipped=offered - inserted,
        load_s=load_s, build_s=build_s, index_bytes=size,
        maintenance_work_mem=maintenance_work_mem, m=int(m), ef_construction=int(ef_construction),
    )
    logger.info("bulk load of %s: %d rows (%d skipped) in %.1f s, index built in %.1f s "
                "(%d bytes)", version, inserted, report.skipped, load_s, build_s, size)
    return report


# --------------------------------------------------------------------------- halfvec option


def halfvec_index_name(version: str) -> str:
    return version_index_name(version) + "_half"


def halfvec_index_sql(version: str, dim: int, m: int = HNSW_M,
                      ef_construction: int = HNSW_EF_CONSTRUCTION) -> sql.Composed:
    """A partial HNSW index over `embedding::halfvec(D)` (half precision: half the graph's
    vector bytes); queries must order by the same expression to use it."""
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON images USING hnsw"
        " ((embedding::halfvec({dim})) halfvec_cosine_ops)"
        " WITH (m = {m}, ef_construction = {ef}) WHERE model_version = {version}"
    ).format(
        name=sql.Identifier(halfvec_index_name(version)),
        dim=sql.Literal(checked_dimension(dim)), m=sql.Literal(int(m)),
        ef=sql.Literal(int(ef_construction)), version=sql.Literal(version),
    )


def halfvec_nearest_sql(dim: int) -> sql.Composed:
    """k-NN of one version through its halfvec index (the bench's query)."""
    cast = sql.SQL("halfvec({})").format(sql.Literal(checked_dimension(dim)))
    return sql.SQL(
        "SELECT key FROM images WHERE model_version = %(version)s"
        " ORDER BY embedding::{cast} <=> %(query)s::vector::{cast} LIMIT %(k)s"
    ).format(cast=cast)


def build_halfvec_index(
    store: EmbeddingStore, version: str, *, m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    maintenance_work_mem: str = DEFAULT_MAINTENANCE_WORK_MEM,
) -> tuple[float, int]:
    """Build the halfvec index beside (or instead of) the float4 one; (seconds, bytes)."""
    _, dim = store.version_and_dimension(version)
    return _build_index(store, halfvec_index_name(version),
                        halfvec_index_sql(version, dim, m, ef_construction),
                        maintenance_work_mem)
