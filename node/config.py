"""The one typed configuration object of a storage node, loaded from TOML and validated at start.

A node's TOML has four tables: ``[node]`` (this node: name, data dir, identity file, listen
addresses, API token file), ``[cluster]`` (identical on every node: cluster id, erasure k and n,
write quorum, and the member list with peer ids), ``[limits]`` (every bound is a named ``_max``
field) and ``[timeouts]``. ``tools`` writes these files (``baas-cluster init``); an operator may
edit them, and a node refuses to start on anything invalid, naming the field.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from node.anchoring.config import AnchoringSettings, anchoring_from_table
from node.chain.deposit_config import DepositsConfig, deposits_from_table
from node.consensus.ledger_ops import OPERATION_EVENTS_MAX
from node.consensus.record_index import (
    BATCH_ENVELOPE_BYTES,
    PUT_BATCH_BYTES_MAX,
    PUT_BATCH_RECORDS_MAX,
)
from node.errors import ConfigError

__all__ = [
    "ClusterConfig",
    "ClusterMember",
    "GcSettings",
    "MoveSettings",
    "NodeConfig",
    "NodeLimits",
    "NodeSettings",
    "NodeTimeouts",
    "RaftSettings",
    "RepairSettings",
    "ScrubSettings",
    "load_node_config",
    "parse_host_port",
    "read_toml",
    "require_positive_fields",
    "resolve_path",
]

T = TypeVar("T")


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """Parse ``host:port`` with an IP literal host; refuse anything else."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{what}: expected host:port, got {value!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"{what}: host must be an IP address, got {host!r}") from exc
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: port out of range in {value!r}")
    return host, port


def _tcp_multiaddr_port(addr: str, what: str) -> tuple[str, int]:
    parts = addr.split("/")
    # /ip4/127.0.0.1/tcp/4101
    if len(parts) != 5 or parts[0] != "" or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        raise ConfigError(f"{what}: expected /ip4/<ip>/tcp/<port>, got {addr!r}")
    return parse_host_port(f"{parts[2]}:{parts[4]}", what)


def require_positive_fields(
    section: Any, table: str, *, integers_only: bool, skip: tuple[str, ...] = ()
) -> None:
    """Refuse any field of a flat limits/timeouts dataclass that is not a positive number."""
    what = "a positive integer" if integers_only else "a positive number"
    for f in fields(section):
        if f.name in skip:
            continue
        value = getattr(section, f.name)
        number = isinstance(value, int) or (not integers_only and isinstance(value, float))
        if isinstance(value, bool) or not number or value <= 0:
            raise ConfigError(f"{table}.{f.name} must be {what}")


@dataclass(frozen=True, slots=True)
class ClusterMember:
    name: str
    peer_id: str
    p2p_addr: str
    http_addr: str

    def validate(self) -> None:
        if not self.name or not self.peer_id:
            raise ConfigError("cluster member needs a name and a peer_id")
        _tcp_multiaddr_port(self.p2p_addr, f"member {self.name} p2p_addr")
        parse_host_port(self.http_addr, f"member {self.name} http_addr")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Settings that are the same on every node of a cluster."""

    cluster_id: str
    k: int
    n: int
    write_quorum: int
    members: tuple[ClusterMember, ...]

    def validate(self) -> None:
        if not self.cluster_id:
            raise ConfigError("cluster.cluster_id is empty")
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"cluster: need 1 <= k <= n, got k={self.k} n={self.n}")
        if self.n > len(self.members):
            raise ConfigError(
                f"cluster: n={self.n} exceeds the {len(self.members)} nodes; "
                "each shard needs a distinct node"
            )
        if not self.k <= self.write_quorum <= self.n:
            raise ConfigError(f"cluster: write_quorum must be in k..n, got {self.write_quorum}")
        if self.write_quorum <= self.n - self.k:
            # Otherwise two versions of one record could each be decodable (node/coordinator).
            raise ConfigError(
                f"cluster: write_quorum must exceed n - k = {self.n - self.k}, "
                f"got {self.write_quorum}"
            )
        for member in self.members:
            member.validate()
        for attr in ("name", "peer_id", "p2p_addr", "http_addr"):
            values = [getattr(m, attr) for m in self.members]
            if len(set(values)) != len(values):
                raise ConfigError(f"cluster: duplicate member {attr}")

    def member(self, name: str) -> ClusterMember:
        for member in self.members:
            if member.name == name:
                return member
        raise ConfigError(f"node {name!r} is not a member of cluster {self.cluster_id}")

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(m.peer_id for m in self.members)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str
    data_dir: Path
    identity_file: Path
    api_token_file: Path
    p2p_listen: str
    http_listen: str


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Every bound of a node, in one place."""

    http_body_bytes_max: int = 16 * 1024 * 1024
    http_inflight_requests_max: int = 256
    record_blob_bytes_max: int = 1024 * 1024
    records_per_request_max: int = 1000
    p2p_frame_bytes_max: int = 32 * 1024 * 1024
    p2p_streams_per_peer_max: int = 8
    p2p_inflight_requests_per_peer_max: int = 256
    p2p_inbound_streams_max: int = 128
    p2p_bridge_calls_max: int = 4096
    # Raft frames queued per peer (node/p2p/raft_link.py); more are dropped (Raft resends).
    raft_queue_frames_max: int = 1024
    # Frames already queued for a peer go out in one stream write of at most about this many
    # bytes (one yamux frame, one Noise message, one socket write instead of one per frame).
    raft_write_bytes_max: int = 256 * 1024
    put_batch_shards_max: int = 1024
    commit_queue_shards_max: int = 65536
    hints_max: int = 200_000
    hint_replay_batch_max: int = 256
    # Coalescing of shard traffic per peer (node/batcher.py): records per read frame (a reply
    # holds at most one shard per record, so this many blobs must fit one frame), calls in
    # flight per peer and operation, and records queued in the coordinator before it refuses
    # new work with 503 overloaded (the queue depth reported to gateways).
    read_batch_records_max: int = 32
    coalesce_inflight_per_peer_max: int = 2
    coordinator_queue_records_max: int = 20_000
    # The shard database's memory (node/storage/shard_store.py): open tables, write buffer,
    # block cache. Together they bound a node's native memory however many shards it holds.
    shard_db_open_files_max: int = 64
    shard_db_write_buffer_bytes_max: int = 16 * 1024 * 1024
    shard_db_block_cache_bytes_max: int = 32 * 1024 * 1024
    # Ledger operations (node/consensus/ledger_ops.py): events one record may carry (at most
    # the log format's OPERATION_EVENTS_MAX), and the ledger keys the on-demand state digest
    # (GET /internal/v1/ledger/digest) reads before it refuses.
    ledger_op_events_max: int = 64
    ledger_digest_keys_max: int = 2_000_000
    # Ledger keys one page of a list (GET /internal/v1/ledger/accounts, .../transfers) reads
    # before it answers what it found, where the ledger's index by partner tag is not complete
    # (business/ledger/index.py: a ledger upgraded to log feature 13 with objects in it).
    ledger_list_scan_keys_max: int = 10_000

    def validate(self) -> None:
        require_positive_fields(self, "limits", integers_only=True)
        if self.ledger_op_events_max > OPERATION_EVENTS_MAX:
            raise ConfigError(f"limits.ledger_op_events_max must be at most {OPERATION_EVENTS_MAX}")
        if self.record_blob_bytes_max * 2 > self.p2p_frame_bytes_max:
            raise ConfigError("limits.p2p_frame_bytes_max must hold at least two record blobs")
        if self.read_batch_records_max * self.record_blob_bytes_max > self.p2p_frame_bytes_max:
            raise ConfigError(
                "limits.read_batch_records_max record blobs must fit p2p_frame_bytes_max"
            )


@dataclass(frozen=True, slots=True)
class NodeTimeouts:
    p2p_dial_s: float = 3.0
    p2p_request_s: float = 5.0
    # How often a node redials members it is not connected to (a restarted peer is back
    # within about this long; disconnects also trigger an immediate redial).
    p2p_reconnect_interval_s: float = 0.5
    hint_replay_interval_s: float = 2.0
    # How long shard traffic for one peer may wait to share a frame with other requests'.
    # A frame costs ~0.8 ms of CPU whatever it carries; a few ms of waiting buys batches.
    coalesce_window_s: float = 0.002
    # Longest a gateway may ask a node to work on one request (its deadline header is capped).
    request_deadline_s_max: float = 30.0

    def validate(self) -> None:
        require_positive_fields(self, "timeouts", integers_only=False)


@dataclass(frozen=True, slots=True)
class RaftSettings:
    """The consensus log's timing and bounds (node/replication/log.py)."""

    tick_s: float = 0.1
    # Followers campaign after [T, 2T) ticks without a leader. At least 1 s: a LevelDB
    # compaction stall on 2 cores must not look like a dead leader.
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    # Appends in flight per follower before an acknowledgement. Few: entries proposed while
    # they fly gather into the next one (group commit), so frames per entry fall as load
    # rises. With 64, paced single proposals at 1,000/s on 5 voters made a frame (and an
    # fsync) per entry per follower and queued up on 2 cores: p99 222 ms against 23 ms with 2.
    append_inflight_max: int = 2
    inbox_frames_max: int = 8192
    proposals_pending_max: int = 65536
    # A proposal may land at most this many entries past the leader's last index when it was
    # stamped; beyond, it is expired at apply and can never commit late.
    proposal_expiry_entries: int = 100_000
    # The record index's gatherer (node/replication/index_client.py): proposals of every
    # coordinator are gathered at the leader into index.put_batch entries of at most
    # index_batch_records_max records and index_batch_bytes_max bytes, and a follower forwards
    # its coordinators' proposals in calls of the same size. A batch waits at most
    # index_gather_window_s for company; at most index_gather_inflight_max batches per lane
    # are proposed (or forwarded) at once, and the next one gathers meanwhile.
    index_batch_records_max: int = 512
    index_batch_bytes_max: int = 384 * 1024
    index_gather_window_s: float = 0.002
    index_gather_inflight_max: int = 4
    # Records waiting in the gatherer (all lanes); past it a proposal is refused at once.
    index_gather_pending_max: int = 20_000
    # Admission: once the oldest record waiting in this node's gatherer has waited this long,
    # the node refuses new writes up front (503 + Retry-After) instead of storing shards whose
    # index entries could not be committed in time (they failed index_unavailable before).
    index_queue_wait_s_max: float = 1.0
    # How long an admitted record's index proposal is retried (leader changes, lost or
    # expired proposals) before the write fails index_unavailable; below the gateway's
    # request deadline (10 s), so the caller hears the reason rather than a timeout.
    index_commit_timeout_s: float = 8.0
    # Writes are acknowledged only once their record index entry is applied (exact
    # idempotency, an agreed position for every record, reads from the index's shard map).
    # False is the pre-consensus path (shards only, no log position): for comparison runs.
    index_writes: bool = True
    # A node added to a running cluster starts with an empty log that the leader fills; it
    # never bootstraps a cluster of its own from the member list (node/membership.py).
    join_existing: bool = False
    # A founding node whose Raft database is fresh asks the other founders whether they record
    # another incarnation for it (it lost its disk) before it may vote (node/incarnation.py):
    # at most this long, asking again every incarnation_check_retry_s, then it refuses to start.
    incarnation_check_timeout_s: float = 120.0
    incarnation_check_retry_s: float = 0.5
    # Log time (node/consensus/log_time.py): a leader stamps entries within
    # clock_offset_max_ms of the quorum-th highest voter clock it was told (a leader with a
    # bad clock cannot push log time away from a majority's clocks), and an idle leader
    # appends a tick entry after log_tick_interval_ms without appending (from log feature 6),
    # so the ledger's expiry runs in an idle cluster.
    clock_offset_max_ms: int = 1000
    log_tick_interval_ms: int = 1000
    # How often the storage membership is reconciled with Raft's and with the p2p layer.
    members_reconcile_interval_s: float = 0.5
    # A learner is promoted to voter once it is at most this many entries behind the leader.
    learner_lag_entries_max: int = 1000
    # Log compaction (node/replication/log.py): every snapshot_entries applied entries the log
    # is cut snapshot_trailing_entries behind the applied index (the state on disk is the
    # snapshot: nothing is copied; 20,000 record index entries are ~7 MB of log), so a
    # follower lagging by fewer catches up by entries, not by the whole state, which is
    # streamed to it on demand (10^6 records: ~350 MB).
    snapshot_entries: int = 20_000
    snapshot_trailing_entries: int = 5_000
    # One InstallSnapshot frame and one stored chunk; at most Raft's bytes per message (1 MiB).
    snapshot_chunk_bytes_max: int = 1024 * 1024
    # The state a snapshot may hold; a larger one is refused (sending it, or receiving it).
    snapshot_bytes_max: int = 2 * 1024 * 1024 * 1024
    snapshot_sends_max: int = 2  # transfers out at once
    snapshot_chunks_queued_max: int = 4  # a transfer's frames waiting in the link per peer
    inbox_bytes_max: int = 256 * 1024 * 1024  # frames waiting for the consensus loop
    # The Raft database's memory: open tables, memtable, block cache (as the shard database).
    db_open_files_max: int = 64
    db_write_buffer_bytes_max: int = 16 * 1024 * 1024
    db_block_cache_bytes_max: int = 16 * 1024 * 1024
    # A bloom filter in the Raft database's tables (plyvel's bloom_filter_bits; 0: none): a
    # lookup of an absent key -- every new ledger transfer id, every new record id -- then
    # reads no block of the levels that lack it. 10 bits: ~1% false positives, ~1.25 B a key.
    bloom_bits_per_key: int = 10
    # The ledger's account values kept in memory by the Raft storage (0: none), filled by
    # reads and by committed write batches, dropped when a snapshot replaces the state
    # (node/replication/durable.py). A random account read that misses LevelDB's block cache
    # costs ~5x a hit; at 10^6 accounts they would all miss. Sized for 2^20 accounts: ~250 MB
    # of RSS when full (docs/performance.md, "The ledger apply"); it fills only as accounts
    # are touched.
    ledger_account_cache_max: int = 1 << 20

    def validate(self) -> None:
        flags = ("index_writes", "join_existing")
        may_be_zero = ("bloom_bits_per_key", "ledger_account_cache_max")
        require_positive_fields(self, "raft", integers_only=False, skip=flags + may_be_zero)
        for flag in flags:
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"raft.{flag} must be true or false")
        for name in may_be_zero:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"raft.{name} must be an integer >= 0 (0: none)")
        if self.bloom_bits_per_key > 64:
            raise ConfigError("raft.bloom_bits_per_key must be at most 64")
        if self.election_ticks * self.tick_s < 1.0:
            raise ConfigError("raft: election_ticks * tick_s must be at least 1 s")
        if self.heartbeat_ticks >= self.election_ticks:
            raise ConfigError("raft: heartbeat_ticks must be below election_ticks")
        # Clock reports are about a heartbeat old when a leader stamps with them: a tolerance
        # below two heartbeats would hold a correct leader's stamps behind its clock.
        if self.clock_offset_max_ms < 2 * self.heartbeat_ticks * self.tick_s * 1000:
            raise ConfigError("raft.clock_offset_max_ms must be at least two heartbeats")
        if self.snapshot_chunk_bytes_max > 1024 * 1024:  # RaftConfig.bytes_per_message_max
            raise ConfigError("raft.snapshot_chunk_bytes_max must be at most 1 MiB")
        if self.snapshot_chunk_bytes_max * self.snapshot_chunks_queued_max > self.inbox_bytes_max:
            raise ConfigError("raft.inbox_bytes_max must hold a transfer's queued chunks")
        if self.snapshot_bytes_max < self.snapshot_chunk_bytes_max:
            raise ConfigError("raft.snapshot_bytes_max must be at least one chunk")
        if self.index_batch_records_max > PUT_BATCH_RECORDS_MAX:
            raise ConfigError(
                f"raft.index_batch_records_max must be at most {PUT_BATCH_RECORDS_MAX}"
            )
        if self.index_batch_bytes_max > PUT_BATCH_BYTES_MAX - BATCH_ENVELOPE_BYTES:
            raise ConfigError(
                "raft.index_batch_bytes_max must leave room for the entry's envelope within "
                f"{PUT_BATCH_BYTES_MAX} bytes"
            )


@dataclass(frozen=True, slots=True)
class MoveSettings:
    """Background shard moves after a membership change (node/mover.py), run by the leader."""

    interval_s: float = 1.0  # between passes over the record index
    moves_inflight_max: int = 8  # shard moves copied, verified or proposed at once
    attempts_max: int = 5  # failed copies or lost proposals before a move waits for a pass
    # The old copy outlives the committed move by this many log positions (readers that
    # have not applied the move yet still find it there).
    grace_entries: int = 10_000
    # Old copies waiting for their grace to end before deletion; beyond, a copy is left in
    # place (space, not safety) and counted.
    deletes_pending_max: int = 100_000

    def validate(self) -> None:
        require_positive_fields(self, "moves", integers_only=False)


@dataclass(frozen=True, slots=True)
class RepairSettings:
    """Repair back to ``n`` healthy shards (node/repair.py), run by the leader: the index is
    walked a page at a time, each page's holders asked what they hold, missing shards rebuilt."""

    page_records_max: int = 512  # index records planned at once (one inventory query per node)
    shards_per_round_max: int = 512  # shard rebuilds planned for one page at once
    shards_per_s_max: float = 1000.0  # repair rate bound: leaves room for traffic
    rebuilds_inflight_max: int = 64  # records being read back for a rebuild at once
    page_pause_s: float = 0.02  # between pages of a pass that found shards missing
    # The pace of a pass that has found nothing missing yet (anti-entropy in the background):
    # its cost per second stays flat whatever the data (a full-speed walk every pass_interval_s
    # made every write ~2x costlier as the index grew); a page with a shard missing switches
    # the pass, and the next one, to full speed.
    scan_records_per_s_max: float = 100.0
    pass_interval_s: float = 10.0  # between the end of a pass over the index and the next one
    # A holder silent this long has its shards rebuilt on the next placement candidate
    # (index.move); before that they wait for it (a restart, a blip).
    node_down_repair_after_s: float = 600.0
    silent_retry_s: float = 2.0  # a silent holder is asked again at most this often
    # Records younger than this are not planned: their last shards may still be on their way
    # (background puts past the write quorum, hinted handoff).
    fresh_record_s: float = 10.0
    # Records a node's scrubber reported (it quarantined one of their shards), waiting on the
    # leader for a round of their own ahead of the walk; beyond, a report is dropped (counted)
    # and the walk finds the record in its time.
    suspects_max: int = 10_000

    def validate(self) -> None:
        require_positive_fields(self, "repair", integers_only=False)
        for name in (
            "page_records_max",
            "shards_per_round_max",
            "rebuilds_inflight_max",
            "suspects_max",
        ):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"repair.{name} must be an integer")


@dataclass(frozen=True, slots=True)
class ScrubSettings:
    """Every node's background check of its own shards (node/scrub.py): each entry read back
    and its checksum verified, a sample also checked against the record's hashes in the log;
    a bad shard is quarantined and repair rebuilds it."""

    # The read pace, bounded both ways: a node of large shards is held by bytes, one of many
    # small ones by shards (reading and checking one costs 20-40 us of CPU here: 200/s is <1%
    # of a core; 8 MiB/s a few % of one disk).
    shards_per_s_max: float = 200.0
    bytes_per_s_max: float = 8.0 * 1024 * 1024
    pass_interval_s: float = 86_400.0  # a full pass starts at most once a day
    page_shards_max: int = 64  # shards read at once
    page_bytes_max: int = 4 * 1024 * 1024  # stored bytes read at once (at least one shard)
    # Intact shards also compared with the record's shard hashes in the log (per second).
    cross_check_records_per_s_max: float = 10.0
    quarantine_kept_max: int = 1000  # bad shards whose bytes are kept (under q) for an operator

    def validate(self) -> None:
        require_positive_fields(self, "scrub", integers_only=False)
        for name in ("page_shards_max", "page_bytes_max", "quarantine_kept_max"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"scrub.{name} must be an integer")


@dataclass(frozen=True, slots=True)
class GcSettings:
    """Collection of orphan shards once their proposal expired (node/storage/orphans.py)."""

    interval_s: float = 5.0
    records_per_pass_max: int = 1024

    def validate(self) -> None:
        require_positive_fields(self, "gc", integers_only=False)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node: NodeSettings
    cluster: ClusterConfig
    limits: NodeLimits = field(default_factory=NodeLimits)
    timeouts: NodeTimeouts = field(default_factory=NodeTimeouts)
    raft: RaftSettings = field(default_factory=RaftSettings)
    moves: MoveSettings = field(default_factory=MoveSettings)
    repair: RepairSettings = field(default_factory=RepairSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    scrub: ScrubSettings = field(default_factory=ScrubSettings)
    anchoring: AnchoringSettings = field(default_factory=AnchoringSettings)
    deposits: DepositsConfig = field(default_factory=DepositsConfig)

    def validate(self) -> None:
        self.cluster.validate()
        self.limits.validate()
        self.timeouts.validate()
        self.raft.validate()
        self.moves.validate()
        self.repair.validate()
        if self.repair.page_records_max > self.limits.records_per_request_max:
            raise ConfigError("repair.page_records_max must be at most records_per_request_max")
        if self.repair.shards_per_round_max < self.cluster.n:
            # A record may need up to n - k rebuilds: one round must fit any single record.
            raise ConfigError("repair.shards_per_round_max must be at least cluster.n")
        self.gc.validate()
        self.scrub.validate()
        self.anchoring.validate()
        self.deposits.validate()
        if self.deposits.credits_per_write_max > self.limits.records_per_request_max:
            raise ConfigError("deposits.credits_per_write_max must be <= records_per_request_max")
        me = self.cluster.member(self.node.name)
        _tcp_multiaddr_port(self.node.p2p_listen, "node.p2p_listen")
        parse_host_port(self.node.http_listen, "node.http_listen")
        if me.p2p_addr != self.node.p2p_listen or me.http_addr != self.node.http_listen:
            raise ConfigError("node listen addresses differ from this node's cluster member entry")

    @property
    def me(self) -> ClusterMember:
        return self.cluster.member(self.node.name)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def build_dataclass(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Build a flat dataclass from a TOML table, refusing unknown keys and wrong types."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"[{where}] unknown keys: {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"[{where}] {exc}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a config file; every failure is a ConfigError naming the file."""
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    return raw


def resolve_path(base: Path, value: Any, what: str) -> Path:
    """A non-empty path from a config value; relative paths are relative to ``base``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty path")
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def cluster_from_table(table: dict[str, Any]) -> ClusterConfig:
    members_raw = table.get("members", [])
    if not isinstance(members_raw, list):
        raise ConfigError("[[cluster.members]] must be an array of tables")
    members = tuple(build_dataclass(ClusterMember, m, "cluster.members") for m in members_raw)
    rest = {key: value for key, value in table.items() if key != "members"}
    for key in ("k", "n", "write_quorum"):
        if key in rest and not isinstance(rest[key], int):
            raise ConfigError(f"cluster.{key} must be an integer")
    rest.setdefault("write_quorum", int(rest.get("k", 0)) + 1)
    return build_dataclass(ClusterConfig, {**rest, "members": members}, "cluster")


def load_node_config(path: Path) -> NodeConfig:
    """Read, parse and validate a node's TOML. Relative paths are relative to the file."""
    raw = read_toml(path)
    base = path.parent.resolve()
    node_table = dict(_section(raw, "node"))
    for key in ("data_dir", "identity_file", "api_token_file"):
        node_table[key] = resolve_path(base, node_table.get(key), f"node.{key}")
    config = NodeConfig(
        node=build_dataclass(NodeSettings, node_table, "node"),
        cluster=cluster_from_table(_section(raw, "cluster")),
        limits=build_dataclass(NodeLimits, _section(raw, "limits"), "limits"),
        timeouts=build_dataclass(NodeTimeouts, _section(raw, "timeouts"), "timeouts"),
        raft=build_dataclass(RaftSettings, _section(raw, "raft"), "raft"),
        moves=build_dataclass(MoveSettings, _section(raw, "moves"), "moves"),
        repair=build_dataclass(RepairSettings, _section(raw, "repair"), "repair"),
        gc=build_dataclass(GcSettings, _section(raw, "gc"), "gc"),
        scrub=build_dataclass(ScrubSettings, _section(raw, "scrub"), "scrub"),
        anchoring=anchoring_from_table(dict(_section(raw, "anchoring")), base),
        deposits=deposits_from_table(dict(_section(raw, "deposits"))),
    )
    config.validate()
    return config
