"""``baas-node``: run one storage node from its TOML config.

Start order: open the databases -> start libp2p (its own trio thread; serves the shard protocol
and runs the group committer) -> start the coordinator's hint replay -> serve the HTTP API.
SIGTERM or SIGINT stops in reverse order; the databases are closed last, so a clean stop loses
nothing. A ``kill -9`` loses nothing acknowledged either: acknowledged shards were fsynced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from functools import partial
from pathlib import Path

from aiohttp import web

from business.identity import IdentityConfig, IdentityMachine
from business.payments.outbox import PaymentsOutbox
from node import runtime
from node.anchoring.forwarding import ANCHORING_PROPOSE_PATH, ForwardingProposer
from node.anchoring.service import AnchorService, LeaderProposer, open_chain
from node.anchoring.state import AnchorLog
from node.api.app import NodeApiState, build_node_app
from node.api.identity_routes import IDENTITY_PROPOSE_PATH, IdentityRoutes, add_identity_routes
from node.api.ledger_routes import LedgerReads
from node.api.payments_routes import PAYMENTS_ACK_PROPOSE_PATH, AckRoutes, add_ack_routes
from node.api.problem import ProblemAppRunner
from node.chain.deposit_service import DepositService, add_deposit_routes
from node.config import NodeConfig, load_node_config, parse_host_port
from node.consensus.deposit_ops import DEPOSIT_FEATURE_VERSION
from node.consensus.ledger_ops import LedgerOps
from node.consensus.members import MembersMachine
from node.consensus.record_index import RecordIndex
from node.consensus.state_machine import AppEntry, Applied, Dispatcher
from node.consensus.types import Membership, default_membership
from node.coordinator import Coordinator
from node.errors import BaasError, InvalidRequest, NotFound, UnsupportedFormat
from node.incarnation import confirm_not_former_member, establish
from node.ledger_metrics import MeasuredLedgerOps, ledger_stat_families
from node.logs import configure_logging
from node.membership import MembershipManager, StoreView
from node.merkle.leaf import LeafData
from node.merkle.log import MerkleLog, MerkleReader, NodeCache, root_at
from node.metrics import Metrics
from node.mover import ShardMover
from node.p2p.identity import keypair_of_seed, load_identity_seed
from node.p2p.service import P2PNode
from node.repair import ShardRepairer
from node.repair_suspects import SuspectReporter, SuspectRoute, add_suspect_route
from node.replication.durable import DurableRaftStorage
from node.replication.forward_auth import ForwardSigner
from node.replication.index_client import GatherLimits, RecordIndexClient
from node.replication.leader_route import LeaderRoute
from node.replication.log import ReplicatedLog, SnapshotPolicy, core_config
from node.runtime import tune_gc
from node.scrub import RecordView, Scrubber
from node.storage.hints import HintStore
from node.storage.orphans import OrphanCollector
from node.storage.shard_service import ShardService
from node.storage.shard_store import ShardStore

log = logging.getLogger("baas.node")
# The newest log feature version this code understands (13: the ledger index by scope tag and
# one-time codes spent on any presentation, business/ledger/index.py; 12: partner tokens, a
# RegisterToken allocates the token's ledger, node/consensus/bridge_ops.py; 11: the Bridge's swap
# index and reserve.low records, node/consensus/bridge_ops.py; 10: vault deposit credits in
# ledger.ops, node/consensus/deposit_ops.py; 9: payments and the Market inside ledger operations,
# their expiry sweep and the webhook outbox, node/consensus/payments_ops.py; 8: Bridge requests;
# 7: the identity entries, partners and wallets, business/identity/; 6: ledger operations and
# ticks, node/consensus/ledger_ops.py; 5: member incarnations, the rejoining state; 4 is the
# leader's index batching).
FEATURE_VERSION_MAX = 13


async def run_node(config: NodeConfig, stop: asyncio.Event) -> None:
    data_dir = config.node.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    store = ShardStore(
        data_dir / "shards",
        open_files_max=config.limits.shard_db_open_files_max,
        write_buffer_bytes_max=config.limits.shard_db_write_buffer_bytes_max,
        block_cache_bytes_max=config.limits.shard_db_block_cache_bytes_max,
    )
    hints = HintStore(data_dir / "hints", hints_max=config.limits.hints_max)
    api_token = config.node.api_token_file.read_text().strip().encode()
    metrics = Metrics("baas_node")
    fsync_seconds = metrics.histogram(
        "commit_fsync_seconds", "time to write and fsync one group-commit batch"
    )
    raft_storage = DurableRaftStorage(
        data_dir / "raft",
        snapshot_chunk_bytes_max=config.raft.snapshot_chunk_bytes_max,
        snapshot_bytes_max=config.raft.snapshot_bytes_max,
        open_files_max=config.raft.db_open_files_max,
        write_buffer_bytes_max=config.raft.db_write_buffer_bytes_max,
        block_cache_bytes_max=config.raft.db_block_cache_bytes_max,
        bloom_bits_per_key=config.raft.bloom_bits_per_key,
        ledger_account_cache_max=config.raft.ledger_account_cache_max,
    )
    # One identity config for both: the ledger's approval check verifies EIP-712 signatures in
    # the identity machine's domain (its chain id).
    identity_config = IdentityConfig()
    ledger_ops = MeasuredLedgerOps(LedgerOps(identity_config), metrics)
    metrics.add_stats(ledger_stat_families(ledger_ops, raft_storage.state_items))
    replicated: list[ReplicatedLog] = []  # bound below; the p2p inbox needs it first
    shard_service = ShardService(
        store,
        config.limits,
        on_commit=lambda _shards, seconds: fsync_seconds.observe(seconds),
        quarantine_kept_max=config.scrub.quarantine_kept_max,
    )
    identity_seed = load_identity_seed(config.node.identity_file)
    p2p = P2PNode(
        identity_seed=identity_seed,
        listen_addr=config.node.p2p_listen,
        members=config.cluster.members,
        limits=config.limits,
        timeouts=config.timeouts,
        handler=shard_service,
        raft_inbox=lambda peer, payload: replicated[0].deliver(peer, payload),
    )
    if p2p.peer_id != config.me.peer_id:
        raise BaasError(
            f"identity file gives peer id {p2p.peer_id}, "
            f"the cluster config says {config.me.peer_id}"
        )
    try:
        incarnation = await _check_incarnation(config, raft_storage, api_token.decode())
    except BaseException:
        raft_storage.close()
        hints.close()
        store.close()
        raise
    replicated_log = ReplicatedLog(
        raft=core_config(p2p.peer_id, config.raft),
        storage=raft_storage,
        dispatcher=Dispatcher(
            [
                RecordIndex(),
                MembersMachine(),
                AnchorLog(root_at),
                ledger_ops,
                IdentityMachine(identity_config),
                PaymentsOutbox(),
            ],
            feature_version_max=FEATURE_VERSION_MAX,
            followers=[MerkleLog()],
        ),
        send=p2p.send_raft,
        initial_membership=Membership()
        if config.raft.join_existing
        else default_membership(m.peer_id for m in config.cluster.members),
        tick_s=config.raft.tick_s,
        log_tick_interval_ms=config.raft.log_tick_interval_ms,
        inbox_frames_max=config.raft.inbox_frames_max,
        proposals_pending_max=config.raft.proposals_pending_max,
        inbox_bytes_max=config.raft.inbox_bytes_max,
        snapshots=SnapshotPolicy(
            entries=config.raft.snapshot_entries,
            trailing_entries=config.raft.snapshot_trailing_entries,
            chunk_bytes_max=config.raft.snapshot_chunk_bytes_max,
            bytes_max=config.raft.snapshot_bytes_max,
            sends_max=config.raft.snapshot_sends_max,
            chunks_queued_max=config.raft.snapshot_chunks_queued_max,
        ),
        send_backlog=p2p.raft_backlog,
    )
    replicated.append(replicated_log)
    membership = MembershipManager(
        log=replicated_log,
        store=raft_storage,
        founding=config.cluster.members,
        join_existing=config.raft.join_existing,
        p2p=p2p,
        n=config.cluster.n,
        api_token=api_token.decode(),
        request_timeout_s=config.timeouts.p2p_request_s,
        reconcile_interval_s=config.raft.members_reconcile_interval_s,
        learner_lag_entries_max=config.raft.learner_lag_entries_max,
        feature_version_max=FEATURE_VERSION_MAX,
        incarnation=incarnation,
    )
    index_client = RecordIndexClient(
        replicated_log,
        config.cluster.members,
        api_token=api_token.decode(),
        proposal_expiry_entries=config.raft.proposal_expiry_entries,
        request_timeout_s=config.timeouts.p2p_request_s,
        address_of=membership.http_addr,
        gather=GatherLimits.of(config.raft),
        signer=ForwardSigner(p2p.peer_id, keypair_of_seed(identity_seed).private_key.sign),
    )
    # An exclusive put of the indexed version replaces an unindexed one held here (issue 17).
    shard_service.committer.indexed_version = lambda rid: _indexed_version(index_client, rid)
    coordinator = Coordinator(
        cluster=config.cluster,
        limits=config.limits,
        timeouts=config.timeouts,
        transport=p2p,
        hints=hints,
        index=index_client if config.raft.index_writes else None,
        membership=membership.placement,
    )
    mover = ShardMover(
        log=replicated_log,
        store=raft_storage,
        coordinator=coordinator,
        membership=membership,
        settings=config.moves,
        request_timeout_s=config.timeouts.p2p_request_s,
    )
    repairer = ShardRepairer(
        log=replicated_log,
        store=raft_storage,
        coordinator=coordinator,
        membership=membership,
        mover=mover,
        settings=config.repair,
        grace_entries=config.moves.grace_entries,
    )
    collector = OrphanCollector(
        store=store,
        applied_index=lambda: replicated_log.status().applied_index,
        indexed_version=lambda rid: _indexed_version(index_client, rid),
        run_collect=lambda items: p2p.on_trio(partial(shard_service.committer.collect, items)),
        interval_s=config.gc.interval_s,
        records_per_pass_max=config.gc.records_per_pass_max,
    )
    suspect_reporter = SuspectReporter(
        LeaderRoute(
            replicated_log,
            address_of=membership.http_addr,
            api_token=api_token.decode(),
            request_timeout_s=config.timeouts.p2p_request_s,
        ),
        repairer.report_suspects,
        records_max=config.limits.records_per_request_max,
        timeout_s=config.timeouts.p2p_request_s,
    )
    scrubber = Scrubber(
        store=store,
        settings=config.scrub,
        records=RecordView(
            indexed_version=lambda rid: _indexed_version(index_client, rid),
            leaf=lambda rid: _leaf_of(raft_storage, rid),
        ),
        quarantine=lambda items: p2p.on_trio(partial(shard_service.committer.quarantine, items)),
        report=suspect_reporter.report,
    )
    chain, sender = open_chain(config.anchoring)  # (None, None) on a node without a chain key

    def leader_proposer(path: str = ANCHORING_PROPOSE_PATH) -> ForwardingProposer:
        """Proposals through the leader on the shared leader route, forwarded to ``path``."""
        return ForwardingProposer(
            replicated_log,
            address_of=membership.http_addr,
            api_token=api_token.decode(),
            request_timeout_s=config.timeouts.p2p_request_s,
            path=path,
        )

    anchoring_proposer = leader_proposer()
    anchoring = AnchorService(
        node_id=p2p.peer_id,
        settings=config.anchoring,
        proposer=anchoring_proposer,
        store=raft_storage,
        chain=chain,
        sender=sender,
    )
    # --- deposits (feature 10): the leader watches the vaults, credits go through the log.
    deposits = DepositService(
        config=config.deposits,
        store=raft_storage,
        is_leader=LeaderProposer(replicated_log).can_propose,  # anchoring's leader rule
        feature_enabled=lambda: (
            Dispatcher.feature_version(StoreView(raft_storage)) >= DEPOSIT_FEATURE_VERSION
        ),
        write=coordinator.write_records,
        metrics=metrics,
    )
    # The Merkle tree's top levels, kept once read (a stored subtree hash never changes): a
    # proof then reads ~7 values from LevelDB instead of ~25 at 10^6 leaves.
    merkle_nodes = NodeCache()
    ready = False
    state = NodeApiState(
        coordinator=coordinator,
        store=store,
        hints=hints,
        limits=config.limits,
        api_token=api_token,
        peer_id=p2p.peer_id,
        connected_peers=p2p.connected_peers,
        ready=lambda: ready and membership.serving(),
        p2p_stats=p2p.stats,
        commit_stats=shard_service.committer.stats,
        raft_status=lambda: _raft_status(replicated_log, p2p),
        index=index_client,
        membership=membership,
        mover_stats=lambda: dataclasses.asdict(mover.stats),
        repair_stats=lambda: dataclasses.asdict(repairer.stats),
        gc_stats=lambda: dataclasses.asdict(collector.stats),
        scrub_stats=lambda: dataclasses.asdict(scrubber.stats),
        log_view=lambda: merkle_nodes.view(StoreView(raft_storage)),
        propose_entry=partial(_propose_one, replicated_log, config.timeouts.p2p_request_s),
        anchoring_status=anchoring.status,
        deposits_status=deposits.status if config.deposits.enabled else None,
        ledger_reads=LedgerReads(
            view=lambda: StoreView(raft_storage),
            read_at=raft_storage.read_state_at,
            digest_keys_max=config.limits.ledger_digest_keys_max,
            read_range_at=raft_storage.read_state_range_at,
            list_scan_keys_max=config.limits.ledger_list_scan_keys_max,
        ),
        request_deadline_s_max=config.timeouts.request_deadline_s_max,
        metrics=metrics,
    )
    # --- identity (feature 7): its proposals take the shared leader route like anchoring's.
    identity_proposer = leader_proposer(IDENTITY_PROPOSE_PATH)
    node_app = build_node_app(state)
    add_identity_routes(
        node_app,
        IdentityRoutes(
            view=lambda: StoreView(raft_storage),
            applied_index=lambda: raft_storage.applied_index,
            proposer=identity_proposer,
            propose_local=state.propose_entry,
            is_leader=lambda: replicated_log.status().role == "leader",
            propose_timeout_s=config.timeouts.p2p_request_s,
            audit_limit_max=IdentityConfig().audit_list_limit_max,
        ),
    )
    # --- the payments outbox's acknowledgements (feature 9), on the same shared leader route.
    ack_proposer = leader_proposer(PAYMENTS_ACK_PROPOSE_PATH)
    add_ack_routes(
        node_app,
        AckRoutes(
            proposer=ack_proposer,
            propose_local=state.propose_entry,
            is_leader=lambda: replicated_log.status().role == "leader",
            propose_timeout_s=config.timeouts.p2p_request_s,
        ),
    )
    add_suspect_route(
        node_app,
        SuspectRoute(
            take=repairer.report_suspects,
            is_leader=lambda: replicated_log.status().role == "leader",
            records_max=config.limits.records_per_request_max,
        ),
    )
    add_deposit_routes(node_app, raft_storage)
    runner = ProblemAppRunner(node_app, access_log=None, handle_signals=False)
    replay: asyncio.Task[None] | None = None
    try:
        await replicated_log.start()
        await index_client.start()
        await p2p.start()
        await membership.start()
        await mover.start()
        await repairer.start()
        await collector.start()
        await suspect_reporter.start()
        await scrubber.start()
        await identity_proposer.start()
        await ack_proposer.start()
        if config.anchoring.enabled:
            await anchoring_proposer.start()
            await anchoring.start()
        if config.deposits.enabled:
            await deposits.start()
        replay = asyncio.create_task(coordinator.replay_hints_forever())
        await runner.setup()
        host, port = parse_host_port(config.node.http_listen, "node.http_listen")
        await web.TCPSite(runner, host, port).start()
        tune_gc()
        ready = True
        log.info(
            "node %s ready: peer %s, p2p %s, http %s",
            config.node.name,
            p2p.peer_id,
            config.node.p2p_listen,
            config.node.http_listen,
        )
        await _until_stopped_or_dead(stop, replicated_log)
    finally:
        ready = False
        log.info("node %s stopping", config.node.name)
        if replay is not None:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay
        await runner.cleanup()
        await deposits.stop()
        if config.anchoring.enabled:
            await anchoring.stop()  # gives the lease up while the log still runs
            await anchoring_proposer.stop()
        await ack_proposer.stop()
        await identity_proposer.stop()
        await coordinator.stop()
        await scrubber.stop()
        await suspect_reporter.stop()
        await collector.stop()
        await repairer.stop()
        await mover.stop()
        await membership.stop()
        await replicated_log.stop()
        await index_client.stop()
        await p2p.stop()
        raft_storage.close()
        hints.close()
        store.close()


async def _until_stopped_or_dead(stop: asyncio.Event, replicated_log: ReplicatedLog) -> None:
    """Return on a stop signal; raise if the consensus loop dies first: a node without its
    loop would keep serving reads and taking shards while it neither votes, appends nor
    applies, so it exits (non-zero, one line why: see main) and its supervisor restarts it."""
    stopped = asyncio.create_task(stop.wait())
    dead = asyncio.create_task(replicated_log.wait_dead())
    try:
        await asyncio.wait((stopped, dead), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, dead):
            task.cancel()
    if replicated_log.died is not None and not stop.is_set():
        raise replicated_log.died


async def _check_incarnation(
    config: NodeConfig, raft_storage: DurableRaftStorage, api_token: str
) -> str:
    """This life's incarnation; a fresh founding node first makes sure it is not a former
    member that lost its disk (node/incarnation.py), before its Raft core may vote."""
    raft_fresh = (
        not raft_storage.has_state
        and raft_storage.last_index == 0
        and raft_storage.applied_index == 0
    )
    incarnation = establish(config.node.data_dir, raft_fresh=raft_fresh)
    log.info("incarnation %s (%s raft database)", incarnation, "fresh" if raft_fresh else "kept")
    if raft_fresh and not config.raft.join_existing:
        await confirm_not_former_member(
            me=config.me.peer_id,
            incarnation=incarnation,
            founders=config.cluster.members,
            http_listen=config.node.http_listen,
            api_token=api_token,
            timeout_s=config.raft.incarnation_check_timeout_s,
            retry_s=config.raft.incarnation_check_retry_s,
            request_timeout_s=config.timeouts.p2p_request_s,
        )
    return incarnation


async def _propose_one(log: ReplicatedLog, timeout_s: float, entry: AppEntry) -> Applied:
    (applied,) = await log.propose([entry], timeout_s=timeout_s)
    return applied


def _indexed_version(index: RecordIndexClient, record_id: bytes) -> bytes | None:
    entry = index.lookup(record_id)
    return None if entry is None else entry.content_hash


def _leaf_of(raft_storage: DurableRaftStorage, record_id: bytes) -> LeafData | None:
    """The record's Merkle leaf as this node applied it (None: not (yet) in the log, or a
    leaf this code cannot read: not comparable, rather than a scrubber stuck on it)."""
    try:
        return LeafData.decode(MerkleReader(StoreView(raft_storage)).leaf_of(record_id).data)
    except (NotFound, InvalidRequest, UnsupportedFormat):
        return None


def _raft_status(replicated_log: ReplicatedLog, p2p: P2PNode) -> dict[str, object]:
    status = replicated_log.status()
    return {
        "role": status.role,
        "term": status.term,
        "leader": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "last_index": status.last_index,
        "voters": list(status.voters),
        "learners": list(status.learners),
        "feature_version_max": FEATURE_VERSION_MAX,
        "frames_dropped": replicated_log.frames_dropped,
        "frames_malformed": replicated_log.frames_malformed,
        **replicated_log.snapshot_stats(),
        **replicated_log.log_time_stats(),
        **{f"link_{k}": v for k, v in p2p.raft_stats().items()},
    }


async def _main(config: NodeConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_node(config, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-node", description="Run a BaaS storage node.")
    parser.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_node_config(args.config)
        runtime.run(_main(config))
    except BaasError as exc:
        log.error("node failed: %s (%s)", exc.detail, exc.code)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
