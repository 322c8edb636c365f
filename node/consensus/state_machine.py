"""The replicated state machine interface: versioned application entries, applied in order.

Raft orders opaque payloads; this module gives them a shape every node decodes the same way,
and a deterministic way to apply them. The ledger and the Merkle log will be further state
machines behind the same interface.

Application entry (the payload of a normal Raft entry), msgpack::

    {"v": FORMAT_VERSION, "t": entry type, "b": body}

* ``v`` -- the envelope format; an unknown one is refused at decode (:class:`UnsupportedFormat`).
* ``t`` -- the entry type, owned by one state machine (``"feature"`` belongs to the dispatcher).
* each type has a *feature version*: the cluster's feature version is itself committed to the
  log (a ``feature`` entry), so a new entry type is only applied once every node has agreed to
  understand it; an entry of a type above the committed feature version is rejected at apply,
  identically on every node (result code ``feature_not_enabled``), never half-applied.

Applying is pure: :meth:`StateMachine.apply` gets the entry, its position (index, term, the
leader's timestamp -- state machines use that, never a local clock) and a read-only view of
the state; it returns a result for the proposer and the key/value writes it makes under its
own key prefix. The durable adapter writes those together with the applied index in one
fsynced batch, so a crash never re-applies or skips an entry.

A *follower* (:class:`Follower`) is a state machine that owns no entry type but derives its
state from other machines' outcomes -- the Merkle log appends a leaf for every record the index
creates. It sees each applied entry with its outcome, once the committed feature version has
reached the one that introduced it, and writes under its own prefix in the same batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from node.errors import InvalidRequest, OperationFailed, UnsupportedFormat

__all__ = [
    "ENTRY_BYTES_MAX",
    "ENTRY_BYTES_MAX_BY_TYPE",
    "FEATURE_ENTRY",
    "FEATURE_KEY",
    "FORMAT_VERSION",
    "AppEntry",
    "Applied",
    "ApplyOutcome",
    "Dispatcher",
    "Follower",
    "LogPosition",
    "Overlay",
    "StateMachine",
    "StateView",
    "Write",
    "decode_app_entry",
    "encode_app_entry",
    "entry_bytes_max",
]

FORMAT_VERSION = 1
FEATURE_ENTRY = "feature"
FEATURE_KEY = b"sm/feature"  # the committed feature version, owned by the dispatcher
ENTRY_BYTES_MAX = 64 * 1024
TYPE_CHARS_MAX = 32
# Entry types that may be larger than ENTRY_BYTES_MAX, with their own bound: a batch of many
# records' index puts (node/consensus/record_index.py) and a batch of ledger operations
# (node/consensus/ledger_ops.py); the leader sizes both by the configured
# raft.index_batch_bytes_max, at most this.
ENTRY_BYTES_MAX_BY_TYPE: Mapping[str, int] = {
    "index.put_batch": 512 * 1024,
    "ledger.ops": 512 * 1024,
}
_DECODE_BYTES_MAX = max(ENTRY_BYTES_MAX, *ENTRY_BYTES_MAX_BY_TYPE.values())


@dataclass(frozen=True, slots=True)
class LogPosition:
    index: int
    term: int
    leader_time_ms: int


@dataclass(frozen=True, slots=True)
class AppEntry:
    type: str
    body: Mapping[str, Any]


Write = tuple[bytes, bytes | None]  # key, value (None deletes)


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What one entry did: a result code for its proposer, details, and the writes."""

    code: str  # "created", "existing", "conflict", "expired", "feature_not_enabled", ...
    detail: Mapping[str, Any] = field(default_factory=dict)
    writes: tuple[Write, ...] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    position: LogPosition
    type: str
    outcome: ApplyOutcome


class StateView(Protocol):
    """Read-only state as of just before the entry being applied (earlier writes visible)."""

    def get(self, key: bytes) -> bytes | None: ...


class StateMachine(Protocol):
    """One deterministic state machine: owns some entry types and one key prefix."""

    prefix: bytes
    entry_types: Mapping[str, int]  # entry type -> the feature version that introduced it

    def apply(self, entry: AppEntry, position: LogPosition, view: StateView) -> ApplyOutcome: ...


class Follower(Protocol):
    """Derives state from applied entries of other machines (no entry type of its own)."""

    prefix: bytes
    feature_version: int  # follows only once the log has enabled this version

    def follow(self, entry: AppEntry, applied: Applied, view: StateView) -> tuple[Write, ...]: ...


def encode_app_entry(entry: AppEntry) -> bytes:
    raw: bytes = msgpack.packb(
        {"v": FORMAT_VERSION, "t": entry.type, "b": dict(entry.body)}, use_bin_type=True
    )
    bytes_max = entry_bytes_max(entry.type)
    if len(raw) > bytes_max:
        raise InvalidRequest(f"a {entry.type} entry is at most {bytes_max} bytes")
    return raw


def entry_bytes_max(entry_type: str) -> int:
    """The largest encoded application entry of ``entry_type`` (envelope included)."""
    return ENTRY_BYTES_MAX_BY_TYPE.get(entry_type, ENTRY_BYTES_MAX)


def decode_app_entry(payload: bytes) -> AppEntry:
    if len(payload) > _DECODE_BYTES_MAX:
        raise UnsupportedFormat("application entry too large")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError) as exc:
        raise UnsupportedFormat("application entry is not msgpack") from exc
    if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
        raise UnsupportedFormat(f"unknown application entry format {raw!r:.40}")
    entry_type, body = raw.get("t"), raw.get("b")
    if not isinstance(entry_type, str) or not 0 < len(entry_type) <= TYPE_CHARS_MAX:
        raise UnsupportedFormat("application entry type must be a short string")
    if not isinstance(body, dict):
        raise UnsupportedFormat("application entry body must be a map")
    if len(payload) > entry_bytes_max(entry_type):
        raise UnsupportedFormat(f"application entry too large for its type {entry_type}")
    return AppEntry(entry_type, body)


class Overlay:
    """A view that sees the writes of earlier entries of the same apply batch."""

    def __init__(self, base: StateView) -> None:
        self._base = base
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self._base.get(key)


class Dispatcher:
    """Routes committed application entries to their state machines, in log order.

    ``feature`` entries raise the committed feature version (never lower it). A payload that
    does not decode, or an unknown type, is rejected with a result code rather than raising:
    every node reaches the same verdict from the same bytes, so the log stays applicable.
    """

    def __init__(
        self,
        machines: Sequence[StateMachine],
        feature_version_max: int,
        followers: Sequence[Follower] = (),
    ) -> None:
        self._machines: dict[str, StateMachine] = {}
        self._introduced: dict[str, int] = {FEATURE_ENTRY: 1}
        self._followers = tuple(followers)
        prefixes = [m.prefix for m in machines] + [f.prefix for f in followers]
        if len(set(prefixes)) != len(prefixes):
            raise InvalidRequest("two state machines share a prefix")
        for prefix in prefixes:
            if any(p != prefix and p.startswith(prefix) for p in prefixes):
                raise InvalidRequest(f"state machine prefixes overlap: {prefix!r}")
            if FEATURE_KEY.startswith(prefix):
                raise InvalidRequest(f"prefix {prefix!r} would own the feature key")
        for machine in machines:
            for entry_type, version in machine.entry_types.items():
                if entry_type in self._introduced:
                    raise InvalidRequest(f"entry type {entry_type!r} has two owners")
                self._machines[entry_type] = machine
                self._introduced[entry_type] = version
        self.feature_version_max = feature_version_max  # the newest this code understands

    @staticmethod
    def feature_version(view: StateView) -> int:
        raw = view.get(FEATURE_KEY)
        return int.from_bytes(raw, "big") if raw else 1

    def apply_batch(
        self, entries: Sequence[tuple[LogPosition, bytes]], view: StateView
    ) -> tuple[list[Applied], list[Write]]:
        """Apply committed payloads in order; return their outcomes and all writes, in order."""
        overlay = Overlay(view)
        applied: list[Applied] = []
        for position, payload in entries:
            entry, outcome = self._apply_one(position, payload, overlay)
            for key, value in outcome.writes:
                overlay.writes[key] = value
            done = Applied(position, entry.type if entry else "?", outcome)
            applied.append(done)
            if entry is None or not self._followers:
                continue
            current = self.feature_version(overlay)
            for follower in self._followers:
                if follower.feature_version <= current:
                    for key, value in follower.follow(entry, done, overlay):
                        overlay.writes[key] = value
        return applied, list(overlay.writes.items())

    def _apply_one(
        self, position: LogPosition, payload: bytes, view: StateView
    ) -> tuple[AppEntry | None, ApplyOutcome]:
        try:
            entry = decode_app_entry(payload)
        except UnsupportedFormat as exc:
            return None, ApplyOutcome("malformed", {"reason": exc.detail})
        introduced = self._introduced.get(entry.type)
        if introduced is None:
            return entry, ApplyOutcome("unknown_type")
        current = self.feature_version(view)
        if introduced > current:
            return entry, ApplyOutcome(
                "feature_not_enabled", {"needs": introduced, "committed": current}
            )
        if entry.type == FEATURE_ENTRY:
            return entry, self._apply_feature(entry, current)
        return entry, self._machines[entry.type].apply(entry, position, view)

    def _apply_feature(self, entry: AppEntry, current: int) -> ApplyOutcome:
        wanted = entry.body.get("version")
        if not isinstance(wanted, int) or wanted < 1:
            return ApplyOutcome("malformed", {"reason": "feature version must be a positive int"})
        if wanted > self.feature_version_max:
            # A majority running newer code committed it: applying on would let this node's
            # state diverge (it would reject entry types the others apply). Stop applying.
            raise OperationFailed(
                f"the log enables feature version {wanted}; this node understands up to "
                f"{self.feature_version_max}: upgrade it",
                code="upgrade_required",
            )
        if wanted <= current:
            return ApplyOutcome("existing", {"version": current})
        return ApplyOutcome(
            "created", {"version": wanted}, ((FEATURE_KEY, wanted.to_bytes(4, "big")),)
        )
