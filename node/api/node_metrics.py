"""The node's metric families besides HTTP counts, read at scrape time from its own stats."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from node.metrics import StatFamily

if TYPE_CHECKING:
    from node.api.app import NodeApiState

__all__ = ["node_stat_families"]


def node_stat_families(state: NodeApiState) -> list[StatFamily]:
    """What a node exposes besides HTTP counts: read from the same stats as /status."""
    coordinator = state.coordinator

    def by_op(field: str) -> Callable[[], dict[str, float]]:
        return lambda: {op: s[field] for op, s in coordinator.batcher_stats().items()}

    def p2p(field: str) -> Callable[[], float]:
        return lambda: state.p2p_stats()[field]

    def raft(field: str) -> Callable[[], float]:
        return lambda: float(state.raft_status()[field])

    def commit(field: str) -> Callable[[], float]:
        return lambda: state.commit_stats()[field]

    def anchoring(field: str) -> Callable[[], float]:
        return lambda: float(state.anchoring_status()[field])

    def repair(field: str) -> Callable[[], float]:
        return lambda: float(state.repair_stats()[field])

    def scrub(field: str) -> Callable[[], float]:
        return lambda: float(state.scrub_stats()[field])

    def anchoring_counters() -> dict[str, float]:
        counters = state.anchoring_status()["counters"]
        kinds = {
            "size": "size_triggered",
            "interval": "interval_triggered",
            "replacement": "replacements",
            "reanchor": "reanchors",
        }
        return {kind: float(counters[name]) for kind, name in kinds.items()}

    families = [
        StatFamily(
            "queue_records", "records being coordinated", lambda: coordinator.records_in_progress
        ),
        StatFamily(
            "queue_records_max", "coordinator_queue_records_max", lambda: coordinator.queue_max
        ),
        StatFamily("http_inflight_requests", "HTTP requests in flight", lambda: state.inflight),
        StatFamily(
            "coalesce_pending_items", "items waiting to share a frame", by_op("pending"), label="op"
        ),
        StatFamily(
            "coalesce_inflight_items", "items in frames in flight", by_op("inflight"), label="op"
        ),
        StatFamily(
            "coalesce_frames", "coalesced frames sent", by_op("calls"), counter=True, label="op"
        ),
        StatFamily(
            "coalesce_items",
            "items sent in coalesced frames",
            by_op("items"),
            counter=True,
            label="op",
        ),
        StatFamily(
            "coalesce_abandoned_items",
            "items dropped: caller gone",
            by_op("dropped_abandoned"),
            counter=True,
            label="op",
        ),
        StatFamily(
            "commit_queue_shards", "shards waiting for group commit", commit("queued_shards")
        ),
        StatFamily("commit_queue_shards_max", "commit_queue_shards_max", commit("queue_max")),
        StatFamily(
            "commit_batches", "fsynced write batches", commit("batches_committed"), counter=True
        ),
        StatFamily("commit_shards", "shards committed", commit("shards_committed"), counter=True),
        StatFamily("shards", "shards stored", state.store.count),
        StatFamily("shard_bytes", "bytes of stored shard entries", lambda: state.store.shard_bytes),
        StatFamily(
            "corrupt_entries_seen",
            "entries failing their checksum",
            lambda: state.store.corrupt_entries_seen,
            counter=True,
        ),
        StatFamily(
            "hints_pending", "shards kept for peers that missed them", lambda: state.hints.count
        ),
        StatFamily("hints_written", "hints kept", lambda: coordinator.hints_written, counter=True),
        StatFamily(
            "hints_corrupt",
            "hints dropped failing their checksum",
            lambda: state.hints.corrupt,
            counter=True,
        ),
        StatFamily(
            "hints_replayed", "hints delivered", lambda: coordinator.hints_replayed, counter=True
        ),
        StatFamily(
            "peers_connected",
            "cluster members connected over libp2p",
            lambda: len(state.connected_peers()),
        ),
        StatFamily("p2p_streams_open", "pooled shard-protocol streams open", p2p("streams_open")),
        StatFamily(
            "p2p_streams_in_use", "pooled streams carrying a request", p2p("streams_in_use")
        ),
        StatFamily("p2p_streams_max", "stream pool capacity", p2p("streams_max")),
        StatFamily("p2p_inbound_streams", "inbound streams open", p2p("inbound_streams")),
        StatFamily(
            "p2p_requests_inflight", "p2p requests awaiting a reply", p2p("requests_inflight")
        ),
        StatFamily(
            "p2p_requests_sent", "p2p requests sent", p2p("requests_sent_total"), counter=True
        ),
        StatFamily(
            "p2p_requests_failed", "p2p requests failed", p2p("requests_failed_total"), counter=True
        ),
        StatFamily(
            "p2p_requests_timed_out",
            "p2p requests timed out",
            p2p("requests_timed_out_total"),
            counter=True,
        ),
        StatFamily(
            "p2p_requests_served", "p2p requests served", p2p("requests_served_total"), counter=True
        ),
        StatFamily(
            "p2p_protocol_errors",
            "malformed frames received",
            p2p("protocol_errors_total"),
            counter=True,
        ),
        StatFamily(
            "p2p_bridge_calls_inflight",
            "asyncio->trio calls in flight",
            p2p("bridge_calls_inflight"),
        ),
        StatFamily(
            "python_allocated_blocks",
            "small-object blocks held by the Python allocator (native memory not included)",
            sys.getallocatedblocks,
        ),
        StatFamily("raft_term", "current Raft term", lambda: state.raft_status()["term"]),
        StatFamily(
            "raft_is_leader",
            "1 on the leader",
            lambda: 1.0 if state.raft_status()["role"] == "leader" else 0.0,
        ),
        StatFamily("raft_commit_index", "committed log index", raft("commit_index")),
        StatFamily(
            "raft_log_time_ms", "log time: the stamp of the last applied entry", raft("log_time_ms")
        ),
        StatFamily(
            "raft_clock_offset_ms",
            "leader only: each peer's clock minus the leader's, as last reported",
            lambda: {
                peer: float(ms) for peer, ms in state.raft_status()["clock_offsets_ms"].items()
            },
            label="peer",
        ),
        StatFamily(
            "raft_clock_alarm",
            "1 when a peer's clock is further than clock_offset_max_ms from the leader's",
            lambda: 1.0 if state.raft_status()["clock_alarm"] else 0.0,
        ),
        StatFamily("raft_log_ticks", "idle tick entries applied", raft("log_ticks"), counter=True),
        StatFamily("raft_applied_index", "applied log index", raft("applied_index")),
        StatFamily(
            "raft_frames_dropped",
            "raft frames dropped (inbox or outbox full, peer away)",
            lambda: state.raft_status()["frames_dropped"]
            + state.raft_status()["link_frames_dropped_total"],
            counter=True,
        ),
        StatFamily(
            "raft_link_frames",
            "raft frames written to peers (sent), in how many stream writes, read from peers",
            lambda: {
                kind: float(state.raft_status()[f"link_{key}"])
                for kind, key in (
                    ("sent", "frames_sent_total"),
                    ("writes", "writes_total"),
                    ("received", "frames_received_total"),
                )
            },
            counter=True,
            label="kind",
        ),
        StatFamily(
            "raft_snapshot_index", "log index of the snapshot in force", raft("snapshot_index")
        ),
        StatFamily("raft_compactions", "log compactions", raft("compactions"), counter=True),
        StatFamily(
            "raft_compacted_entries",
            "log entries dropped by compaction",
            raft("compacted_entries"),
            counter=True,
        ),
        StatFamily(
            "raft_compaction_ms", "how long the latest compaction took", raft("compaction_ms")
        ),
        StatFamily(
            "raft_snapshot_sent_bytes",
            "snapshot bytes streamed to followers (completed transfers)",
            raft("snapshot_sent_bytes"),
            counter=True,
        ),
        StatFamily(
            "raft_snapshots_sent",
            "snapshots streamed to followers",
            raft("snapshots_sent"),
            counter=True,
        ),
        StatFamily(
            "raft_snapshots_installed",
            "state replaced from a snapshot (received from the leader, or redone at restart)",
            raft("snapshots_installed"),
            counter=True,
        ),
        StatFamily(
            "raft_snapshots_rejected",
            "snapshot transfers refused (oversize, malformed, failed digest)",
            raft("snapshots_rejected"),
            counter=True,
        ),
        StatFamily(
            "repair_shards_rebuilt",
            "shards rebuilt in place by repair (on the leader)",
            repair("shards_rebuilt"),
            counter=True,
        ),
        StatFamily(
            "repair_shard_bytes_rebuilt",
            "bytes of shards rebuilt in place by repair",
            repair("shard_bytes_rebuilt"),
            counter=True,
        ),
        StatFamily(
            "repair_shards_relocated",
            "shards moved off a node gone too long by repair",
            repair("shards_relocated"),
            counter=True,
        ),
        StatFamily(
            "repair_shards_failed",
            "repairs that did not complete (planned again)",
            repair("shards_failed"),
            counter=True,
        ),
        StatFamily("repair_passes", "complete repair passes", repair("passes"), counter=True),
        StatFamily(
            "repair_backlog_records",
            "records still below n after the last repair pass",
            repair("backlog_records"),
        ),
        StatFamily(
            "repair_lost_records",
            "records with fewer than k healthy shards in the last repair pass",
            repair("lost_records"),
        ),
        StatFamily(
            "repair_records_below_n",
            "records the last repair pass found below n, by healthy shards",
            lambda: {h: float(c) for h, c in state.repair_stats()["below_n_by_healthy"].items()},
            label="healthy",
        ),
        StatFamily(
            "repair_last_pass_rate_shards_per_s",
            "shards repaired per second over the last pass",
            repair("last_pass_rate_shards_per_s"),
        ),
        StatFamily(
            "repair_rate_shards_per_s",
            "shards repaired per second of repair rounds that had work",
            repair("rate_shards_per_s"),
        ),
        StatFamily(
            "repair_last_pass_finished_ms",
            "when the last repair pass ended (leader clock, ms since the epoch)",
            repair("last_pass_finished_ms"),
        ),
        StatFamily(
            "scrub_shards_checked",
            "shard entries the scrubber read back and checksum-verified",
            scrub("shards_checked"),
            counter=True,
        ),
        StatFamily(
            "scrub_bytes_checked",
            "bytes of shard entries the scrubber read back",
            scrub("bytes_checked"),
            counter=True,
        ),
        StatFamily(
            "scrub_cross_checked",
            "intact shards the scrubber compared with their record's leaf hashes",
            scrub("cross_checked"),
            counter=True,
        ),
        StatFamily(
            "scrub_corrupt",
            "bad shards the scrubber found, by why (checksum: damaged entry; shard_hash: "
            "not the bytes the record's leaf names)",
            lambda: {why: float(n) for why, n in state.scrub_stats()["corrupt"].items()},
            counter=True,
            label="reason",
        ),
        StatFamily(
            "scrub_quarantined",
            "bad shards taken out of service (repair rebuilds them)",
            scrub("quarantined"),
            counter=True,
        ),
        StatFamily("scrub_passes", "complete scrub passes", scrub("passes"), counter=True),
        StatFamily(
            "scrub_pass_seconds", "how long the last complete scrub pass took", scrub("last_pass_s")
        ),
        StatFamily(
            "scrub_last_pass_finished_ms",
            "when the last scrub pass ended (ms since the epoch)",
            scrub("last_pass_finished_ms"),
        ),
        StatFamily("merkle_log_leaves", "leaves in the Merkle log", anchoring("tree_size")),
        StatFamily(
            "anchored_leaves",
            "leaves covered by an anchor mined on the chain",
            anchoring("anchored_tree_size"),
        ),
        StatFamily(
            "anchored_final_leaves",
            "leaves covered by a final anchor (enough confirmations)",
            anchoring("final_tree_size"),
        ),
        StatFamily(
            "anchor_batches_final",
            "anchor batches final on the chain",
            anchoring("final_through"),
        ),
        StatFamily(
            "anchor_transactions",
            "anchor transactions made, by what made them (size, interval, replacement) and "
            "re-anchors after a reorg (the same transaction sent again)",
            anchoring_counters,
            counter=True,
            label="kind",
        ),
        StatFamily(
            "anchor_chain_requests",
            "JSON-RPC requests anchoring made to the chain, by method (none on a node without "
            "the key)",
            lambda: {
                method: float(count)
                for method, count in state.anchoring_status()["chain_requests"].items()
            },
            counter=True,
            label="method",
        ),
    ]
    return families
