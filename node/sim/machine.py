"""The simulated replicated state machine: client commands, and the real record index.

Two kinds of committed entries share the log, told apart by their first byte:

* an application entry (``encode_app_entry``: a msgpack map, ``0x83``) goes to the real
  :class:`~node.consensus.state_machine.Dispatcher` with the real
  :class:`~node.consensus.record_index.RecordIndex` (``index.put``, ``index.move``, ``feature``),
  the real :class:`~node.consensus.ledger_ops.LedgerOps` (``ledger.ops``, ``ledger.tick``; from
  feature 8 the Bridge step and its point-expiry sweep, from 9 the payments step, its expiry
  sweep and the webhook outbox, from 11 the Bridge's swap index), the real
  :class:`~business.identity.IdentityMachine` (``partner.put``, ``wallet.link``,
  ``code.issue``) and the real :class:`~business.payments.outbox.PaymentsOutbox`
  (``payments.ack``), as a node builds them, over this machine's key/value state, up to the
  node's own newest feature version (``node.main.FEATURE_VERSION_MAX``);
* anything else is a :class:`Command`: one small client write, ``client|seq|origin|value``.
  ``(client, seq)`` is its idempotency id: a client that got no answer sends the same id again,
  so one id may be committed at several log positions.

Dedupe rule for commands: the first committed occurrence of an id is applied (it enters the
applied stream) and its log index is the id's position for good; every later occurrence is a
no-op whose result is that first position. So an id appears once in the applied stream, and
every acknowledgement of it names the same position. The set of seen ids is part of the state
(and of its snapshot), so the rule survives restarts and snapshot installs. (Unbounded here;
the real index bounds it by the proposal expiry.) The record index has its own rule (first
writer wins, see its module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from business.identity import IdentityConfig, IdentityMachine
from business.ledger.model import Result
from business.payments.core import PaymentOutcome, Prepared
from business.payments.model import OP_PREFIX, PAYMENT_PREFIX, TransferCode
from business.payments.outbox import PaymentsOutbox
from node.consensus.ledger_ops import LEDGER_OPS, LEDGER_TICK, LedgerOps
from node.consensus.record_index import RecordIndex
from node.consensus.state_machine import Applied, Dispatcher, LogPosition, Write
from node.consensus.types import Entry, EntryKind, NodeId
from node.main import FEATURE_VERSION_MAX

__all__ = [
    "FEATURE_VERSION_SIM",
    "FEATURE_VERSION_SIM_MAX",
    "IDENTITY_SIM",
    "Command",
    "CommandResult",
    "DedupMachine",
    "MachineState",
    "RequestId",
    "StreamRecord",
    "decode_state",
]

# index.move needs 2, index.put_batch 4, ledger.ops 6, identity 7, the Bridge 8, payments 9,
# deposits 10, the swap index 11. The simulated cluster enables the newest version a node
# understands (read from node/main.py, never copied: a new feature is simulated the day it
# lands). 3, the Merkle log and anchoring, and 5, member incarnations, have no machine here:
# nothing of them is proposed.
FEATURE_VERSION_SIM = FEATURE_VERSION_MAX
FEATURE_VERSION_SIM_MAX = FEATURE_VERSION_MAX
IDENTITY_SIM = IdentityConfig(chain_id=31337)  # the EIP-712 domain the sim's users sign in
APP_ENTRY_FIRST_BYTE = 0x83  # a msgpack map of three: {"v", "t", "b"}

RequestId = tuple[str, int]  # (client id, the client's sequence number)
StreamRecord = tuple[int, str, int, int]  # (log index, client, seq, value), applied once per id
MachineState = tuple[list[StreamRecord], dict[bytes, bytes]]  # the stream, the index's keys


@dataclass(frozen=True, slots=True)
class Command:
    client: str
    seq: int
    origin: NodeId  # the node that proposed it; it acknowledges the client once applied
    value: int

    @property
    def request_id(self) -> RequestId:
        return (self.client, self.seq)

    def encode(self) -> bytes:
        return f"{self.client}|{self.seq}|{self.origin}|{self.value}".encode()

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        client, seq, origin, value = payload.decode("utf-8", "replace").split("|")
        return cls(client, int(seq), origin, int(value))


@dataclass(frozen=True, slots=True)
class CommandResult:
    command: Command
    position: int  # the id's position (its first committed index)
    record: StreamRecord | None  # the new stream record (None: a duplicate id)


def is_app_entry(payload: bytes) -> bool:
    return payload[:1] == bytes([APP_ENTRY_FIRST_BYTE])


class DedupMachine:
    """Applies committed entries: ``stream`` the applied commands, ``kv`` the record index."""

    def __init__(
        self, *, dedupe: bool = True, skip_expiry: bool = False, skip_refund_record: bool = False
    ) -> None:
        self.dedupe = dedupe  # False only for the deliberately broken variant no-dedupe
        self.applied_index = 0
        self.log_time_ms = 0  # the last applied entry's stamp (a client's quotes read it)
        self.swept_ms = 0  # the last ledger.ops / ledger.tick stamp: expiry swept up to it
        self.stream: list[StreamRecord] = []
        self.positions: dict[RequestId, int] = {}
        self.kv: dict[bytes, bytes] = {}
        self.ledger_ops = LedgerOps(IDENTITY_SIM)
        if skip_expiry:  # the deliberately broken variant skip-expiry: this replica never sweeps
            setattr(self.ledger_ops._bridge, "expire", _no_sweep)  # noqa: B010
        if skip_refund_record:  # the broken variant skip-refund-record: see node/sim/bugs.py
            payments = self.ledger_ops._payments.payments
            setattr(payments, "settle", _forgetting_refunds(payments.settle))  # noqa: B010
        self._dispatcher = Dispatcher(
            [RecordIndex(), self.ledger_ops, IdentityMachine(IDENTITY_SIM), PaymentsOutbox()],
            feature_version_max=FEATURE_VERSION_SIM_MAX,
        )

    def get(self, key: bytes) -> bytes | None:
        """The state view the dispatcher reads."""
        return self.kv.get(key)

    def apply(self, entry: Entry) -> CommandResult | tuple[Applied, list[Write]] | None:
        """Apply one committed entry: a command's result, or an application entry's outcome
        and writes (already applied to ``kv``)."""
        self.applied_index = entry.index
        if entry.kind is not EntryKind.NORMAL:
            return None
        self.log_time_ms = entry.leader_time_ms
        if is_app_entry(entry.payload):
            position = LogPosition(entry.index, entry.term, entry.leader_time_ms)
            (applied,), writes = self._dispatcher.apply_batch([(position, entry.payload)], self)
            apply_writes(self.kv, writes)
            if applied.type in (LEDGER_OPS, LEDGER_TICK):
                self.swept_ms = entry.leader_time_ms
            return applied, writes
        command = Command.decode(entry.payload)
        first = self.positions.get(command.request_id)
        if first is not None and self.dedupe:
            return CommandResult(command, first, None)
        record = (entry.index, command.client, command.seq, command.value)
        self.stream.append(record)
        self.positions.setdefault(command.request_id, entry.index)
        return CommandResult(command, entry.index, record)

    def data(self) -> bytes:
        """The snapshot of the state: the applied stream (the seen ids derive from it) and the
        record index's keys."""
        raw: bytes = msgpack.packb([[list(r) for r in self.stream], self.kv], use_bin_type=True)
        return raw

    def load(self, state: MachineState, applied_index: int) -> None:
        stream, kv = state
        self.stream = list(stream)
        self.kv = dict(kv)
        self.applied_index = applied_index
        self.positions = {}
        for index, client, seq, _ in self.stream:
            self.positions.setdefault((client, seq), index)


def _no_sweep(log_index: int, now_ms: int, layer: object) -> int:
    return 0


def _forgetting_refunds(settle: Callable[[Prepared, Sequence[Result]], PaymentOutcome]) -> Any:
    """``settle`` that keeps a successful refund's ledger chain and its sticky result but drops
    its payment record update (the refunded amount stays where it was) on this replica."""

    def broken(prepared: Prepared, results: Sequence[Result]) -> PaymentOutcome:
        settled = settle(prepared, results)
        refund = any(getattr(e, "code", 0) == TransferCode.REFUND for e in prepared.events)
        if not (refund and settled.code.succeeded):
            return settled
        kept = tuple(
            (k, v)
            for k, v in settled.writes
            if not k.startswith(PAYMENT_PREFIX) or k.startswith(OP_PREFIX)
        )
        return replace(settled, writes=kept)

    return broken


def apply_writes(kv: dict[bytes, bytes], writes: list[Write]) -> None:
    for key, value in writes:
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = value


def decode_state(data: bytes) -> MachineState:
    raw: Any = msgpack.unpackb(data, raw=False, strict_map_key=False) if data else [[], {}]
    stream, kv = raw
    return [(int(i), str(c), int(s), int(v)) for i, c, s, v in stream], dict(kv)
