"""The faults of ``baas-chaos``: a schedule drawn from one seed, partitions cut with iptables on
loopback, and the two disk faults (a wiped data directory, a corrupted shard in a table file).

**The schedule** (:func:`plan_faults`, pure): one partition (a minority of one or two nodes cut
from the rest, healed after a while), one disk wipe (near 30% of the run, as issue 17's
"minute 3 of 10"), one corrupted shard, and between them a kill -9 of a random node every
``kill_every_s`` seconds, restarted after ``down_s``. Events never overlap: the command runs
them one after another, late ones at once.

**Partitions** (:class:`LoopbackPartitioner`): every node of the cluster runs as this user with
its own primary group id (``LocalCluster(node_groups=...)``), so each of its sockets carries
that gid. A rule in ``mangle OUTPUT`` marks every loopback TCP connection a node dials to
another node's p2p or HTTP port with the pair (dialer, listener) as its conntrack mark; a
partition adds ``DROP`` rules in ``filter OUTPUT`` for the marks of every pair across the cut.
On loopback both directions of a connection leave through OUTPUT and share its conntrack
entry, so the cut is symmetric and applies to connections already open; the gateway (this
process's gid) still reaches every node, as a client on both sides of a real partition would.
Every rule lives in chains named after this process, jumped to from OUTPUT; :meth:`remove`
deletes them all (the command calls it in ``finally`` and on SIGINT/SIGTERM). Rules match only
this run's gids and ports, so other clusters on the machine are untouched.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import plyvel

from node.errors import OperationFailed
from node.records import HASH_BYTES
from node.storage.entry import CHECKSUM_BYTES
from node.storage.shard_store import PREFIX_SHARD

__all__ = [
    "FaultEvent",
    "LoopbackPartitioner",
    "PartitionNode",
    "corrupt_one_shard",
    "plan_faults",
    "wipe_data_dir",
]

NODES_MAX = 15  # a node's index fits in 4 bits of the connection mark
PARTITION_AT = (0.10, 0.20)  # fractions of the run: where the partition starts
PARTITION_HOLD = (0.10, 0.15)  # and how long it holds
PARTITION_HOLD_S = (5.0, 60.0)  # bounds on the hold
WIPE_AT = 0.30  # issue 17: "one disk wiped at minute 3" of 10
CORRUPT_AT = (0.55, 0.70)
KILL_DOWN_S = (0.5, 2.0)  # a killed node stays down this long before its restart
CORRUPT_CANDIDATES_MAX = 1000  # shard entries tried before the corrupt fault gives up


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One scheduled fault: ``kind`` is kill, partition, heal, wipe or corrupt."""

    at_s: float  # since the chaos phase started
    kind: str
    nodes: tuple[str, ...]  # the victim; for a partition the minority side
    down_s: float = 0.0  # kill: how long the node stays down


def plan_faults(
    rng: random.Random, names: Sequence[str], duration_s: float, kill_every_s: tuple[float, float]
) -> tuple[FaultEvent, ...]:
    """The run's faults in time order (see the module docstring)."""
    if len(names) < 3:
        raise OperationFailed("chaos needs at least 3 nodes (a majority survives a partition)")
    ordered = sorted(names)
    minority = tuple(sorted(rng.sample(ordered, rng.choice((1, (len(ordered) - 1) // 2)))))
    part_at = rng.uniform(*PARTITION_AT) * duration_s
    hold = min(
        max(rng.uniform(*PARTITION_HOLD) * duration_s, PARTITION_HOLD_S[0]), PARTITION_HOLD_S[1]
    )
    fixed = [
        FaultEvent(round(part_at, 1), "partition", minority),
        FaultEvent(round(part_at + hold, 1), "heal", minority),
        FaultEvent(
            round(max(WIPE_AT * duration_s, part_at + hold + 1.0), 1),
            "wipe",
            (rng.choice(ordered),),
        ),
        FaultEvent(
            round(rng.uniform(*CORRUPT_AT) * duration_s, 1), "corrupt", (rng.choice(ordered),)
        ),
    ]
    events = list(fixed)
    at = rng.uniform(*kill_every_s)
    while at < duration_s:
        victim = rng.choice(ordered)
        events.append(
            FaultEvent(round(at, 1), "kill", (victim,), round(rng.uniform(*KILL_DOWN_S), 1))
        )
        at += rng.uniform(*kill_every_s)
    return tuple(sorted(events, key=lambda e: (e.at_s, e.kind != "heal")))


def wipe_data_dir(data_dir: Path) -> None:
    """The node's whole data directory goes (the node must be stopped)."""
    shutil.rmtree(data_dir)


def corrupt_one_shard(shard_db: Path, rng: random.Random) -> str:
    """On a stopped node: flip one byte of one shard entry's checksum in its LevelDB table file
    (reading the entry then fails its check); returns the record id (hex) whose shard it was.

    The flip lands in the entry's stored checksum, not its shard bytes: those may end in the
    erasure code's zero padding or repeat across small entries, which LevelDB's block
    compression stores as back-references, so they need not appear verbatim in any table file
    (a CI run once found none for the shard it chose). Sixteen bytes of SHA-256 are stored as
    they are. Entries are tried in a random order until one is found in a table file.
    """
    db = plyvel.DB(str(shard_db))
    try:
        db.compact_range()  # every entry into table files, where the flip lands
        entries = list(db.iterator(prefix=PREFIX_SHARD))
    finally:
        db.close()
    if not entries:
        raise OperationFailed(f"no shard in {shard_db} to corrupt")
    rng.shuffle(entries)
    tables = [(path, bytearray(path.read_bytes())) for path in sorted(shard_db.glob("*.ldb"))]
    for key, value in entries[:CORRUPT_CANDIDATES_MAX]:
        needle = value[1 : 1 + CHECKSUM_BYTES]  # node/storage/entry.py: version || checksum
        for path, raw in tables:
            at = raw.find(needle)
            if at >= 0 and raw.find(needle, at + 1) < 0:
                raw[at + CHECKSUM_BYTES // 2] ^= 0x01
                path.write_bytes(bytes(raw))
                return bytes(key[1 : 1 + HASH_BYTES]).hex()
    raise OperationFailed(f"no shard entry's checksum found in a table file of {shard_db}")


@dataclass(frozen=True, slots=True)
class PartitionNode:
    name: str
    gid: int  # the primary group id the node's process runs with
    ports: tuple[int, ...]  # its listening ports (p2p, HTTP)


Runner = Callable[[list[str]], None]


def _run_iptables(args: list[str]) -> None:
    try:
        done = subprocess.run(
            ["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError as exc:
        raise OperationFailed(
            "iptables is not installed (apt-get install iptables), or run with --no-partition"
        ) from exc
    if done.returncode != 0:
        raise OperationFailed(f"iptables {' '.join(args)}: {done.stderr.strip()}")


class LoopbackPartitioner:
    """Cuts real TCP traffic between groups of this run's nodes (see the module docstring)."""

    def __init__(self, nodes: Sequence[PartitionNode], run_tag: int, run: Runner = _run_iptables):
        if len(nodes) > NODES_MAX:
            raise OperationFailed(f"at most {NODES_MAX} nodes can be partitioned")
        self._nodes = {n.name: (i, n) for i, n in enumerate(sorted(nodes, key=lambda n: n.name))}
        self._tag = run_tag & 0xFFFF
        self._chain = f"BAASCHAOS{run_tag}"[:28]
        self._run = run
        self._installed: list[str] = []  # tables whose chain exists
        self.cut_now: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    @property
    def chain(self) -> str:
        """The name of its chains (in the mangle and filter tables)."""
        return self._chain

    def _mark(self, dialer: str, listener: str) -> str:
        return hex((self._tag << 8) | (self._nodes[dialer][0] << 4) | self._nodes[listener][0])

    def install(self) -> None:
        """The chains, their jumps, and the marking rules (no traffic is cut yet)."""
        for table in ("mangle", "filter"):
            self._run(["-t", table, "-N", self._chain])
            self._installed.append(table)
            self._run(["-t", table, "-I", "OUTPUT", "1", "-o", "lo", "-j", self._chain])
        for dialer, (_, a) in sorted(self._nodes.items()):
            for listener, (_, b) in sorted(self._nodes.items()):
                if dialer == listener:
                    continue
                for port in b.ports:
                    self._run(
                        [
                            "-t",
                            "mangle",
                            "-A",
                            self._chain,
                            "-p",
                            "tcp",
                            "--dport",
                            str(port),
                            "-m",
                            "owner",
                            "--gid-owner",
                            str(a.gid),
                            "-j",
                            "CONNMARK",
                            "--set-mark",
                            self._mark(dialer, listener),
                        ]
                    )

    def cut(self, side: Sequence[str]) -> None:
        """Cut ``side`` from every other node, both ways (one partition at a time)."""
        self.heal()
        rest = tuple(n for n in sorted(self._nodes) if n not in side)
        for a in side:
            for b in rest:
                for mark in (self._mark(a, b), self._mark(b, a)):
                    self._run(
                        [
                            "-t",
                            "filter",
                            "-A",
                            self._chain,
                            "-m",
                            "connmark",
                            "--mark",
                            mark,
                            "-j",
                            "DROP",
                        ]
                    )
        self.cut_now = (tuple(sorted(side)), rest)

    def heal(self) -> None:
        if "filter" in self._installed:
            self._run(["-t", "filter", "-F", self._chain])
        self.cut_now = None

    def remove(self) -> list[str]:
        """Every rule and chain this partitioner added; returns the errors (none expected)."""
        errors: list[str] = []
        for table in list(self._installed):
            for args in (
                ["-t", table, "-D", "OUTPUT", "-o", "lo", "-j", self._chain],
                ["-t", table, "-F", self._chain],
                ["-t", table, "-X", self._chain],
            ):
                try:
                    self._run(args)
                except OperationFailed as exc:
                    errors.append(exc.detail)
            self._installed.remove(table)
        self.cut_now = None
        return errors


def run_tag() -> int:
    """This process's tag for chain names and marks."""
    return os.getpid() & 0xFFFF
