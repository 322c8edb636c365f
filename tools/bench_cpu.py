"""The ``cpu`` phase of ``baas-bench``: per-record CPU cost of the write path, one thread.

Four stages, each timed over all records before the next starts, with the project's own code:

* ``encrypt``: :func:`node.storage.envelope.seal_blob` of the record's canonical JSON (fresh
  data key, wrap, AES-256-GCM, msgpack envelope) -- what the gateway does per record;
* ``erasure``: content hash + :func:`node.storage.erasure.encode_blob` (zfec, k of n);
* ``shard_meta``: the ``n`` :class:`node.records.Shard` objects with their validated metas --
  with ``erasure``, what the coordinator does per record;
* ``store``: :meth:`node.storage.shard_store.ShardStore.write_batch` of all ``n`` shards of
  ``batch_records`` records at a time (entry encoding, one LevelDB WriteBatch, one fsync) in a
  temporary directory -- what the ``n`` holders do together, here in one database.

Both CPU time (``time.process_time``) and wall time are reported, in µs per record; the store's
wall time includes the fsync wait, its CPU time does not.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rfc8785

from node.records import Shard, ShardMeta, content_hash_of
from node.storage.envelope import seal_blob
from node.storage.erasure import encode_blob
from node.storage.shard_store import ShardStore
from tools.bench_load import bench_record

__all__ = ["run_cpu_phase"]

PARTNER_ID = "bench-partner"
KEY_ID = "k1"


def _timed(work: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def _shards(
    record_id: bytes,
    coded: tuple[bytes, int, list[bytes]],  # content hash, blob size, pieces
    k: int,
    n: int,
    created_at_ms: int,
) -> list[Shard]:
    content_hash, blob_bytes, pieces = coded
    body_fingerprint = hashlib.sha256(record_id).digest()  # the gateway sends one per record
    return [
        Shard(
            ShardMeta(
                record_id=record_id,
                content_hash=content_hash,
                index=index,
                k=k,
                n=n,
                blob_bytes=blob_bytes,
                partner_id=PARTNER_ID,
                body_fingerprint=body_fingerprint,
                created_at_ms=created_at_ms,
            ),
            piece,
        )
        for index, piece in enumerate(pieces)
    ]


def run_cpu_phase(
    records: int, *, k: int = 3, n: int = 5, batch_records: int = 500
) -> dict[str, Any]:
    if records < 1:
        raise ValueError("the cpu phase needs at least one record")
    plaintexts = [rfc8785.dumps(bench_record(i)) for i in range(records)]
    record_ids = [hashlib.sha256(b"bench-%d" % i).digest() for i in range(records)]
    partner_key = hashlib.sha256(b"bench partner key").digest()
    blobs: list[bytes] = []
    coded: list[tuple[bytes, int, list[bytes]]] = []
    shard_lists: list[list[Shard]] = []

    def encrypt() -> None:
        for rid, plaintext in zip(record_ids, plaintexts, strict=True):
            blobs.append(
                seal_blob(
                    plaintext,
                    record_id=rid,
                    partner_id=PARTNER_ID,
                    key_id=KEY_ID,
                    partner_key=partner_key,
                )
            )

    def erasure() -> None:
        for blob in blobs:
            coded.append((content_hash_of(blob), len(blob), encode_blob(blob, k, n)))

    def shard_meta() -> None:
        created_at_ms = int(time.time() * 1000)
        for rid, one in zip(record_ids, coded, strict=True):
            shard_lists.append(_shards(rid, one, k, n, created_at_ms))

    with tempfile.TemporaryDirectory(prefix="baas-bench-cpu-") as tmp:
        store = ShardStore(Path(tmp) / "shards")
        try:

            def put() -> None:
                for start in range(0, records, batch_records):
                    chunk = shard_lists[start : start + batch_records]
                    store.write_batch([shard for shards in chunk for shard in shards])

            stages = {
                "encrypt": _timed(encrypt),
                "erasure": _timed(erasure),
                "shard_meta": _timed(shard_meta),
                "store": _timed(put),
            }
        finally:
            store.close()
    cpu_us = {name: round(cpu / records * 1e6, 2) for name, (_, cpu) in stages.items()}
    wall_us = {name: round(wall / records * 1e6, 2) for name, (wall, _) in stages.items()}
    cpu_us["total"] = round(sum(cpu_us.values()), 2)
    wall_us["total"] = round(sum(wall_us.values()), 2)
    return {
        "records": records,
        "k": k,
        "n": n,
        "store_batch_records": batch_records,
        "blob_bytes_mean": round(sum(map(len, blobs)) / records, 1),
        "cpu_us_per_record": cpu_us,
        "wall_us_per_record": wall_us,
        "records_per_s": round(1e6 / max(cpu_us["total"], 1e-3), 1),
        "errors": {},
        "client_cpu_s": round(sum(cpu for _, cpu in stages.values()), 3),
        "wall_s": round(sum(wall for wall, _ in stages.values()), 3),
    }
