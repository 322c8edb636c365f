"""Dashboard sessions and sign-in limits: the pure core (no I/O, no clock, no randomness).

The caller passes the time (``now_s``) and the random tokens in, so every rule here is tested
with plain numbers:

* :class:`SessionStore` holds at most ``sessions_max`` sessions. A session ends when unused
  for ``idle_s``, ``absolute_s`` after it opened, or at sign-out; when the store is full the
  least recently used session is dropped to make room (an operator never gets locked out by
  stale sessions).
* :class:`SigninGuard` counts failed sign-ins per key (an operator name, a client address):
  ``failures_max`` failures within ``lockout_s`` lock the key until the oldest of them is
  ``lockout_s`` old. It remembers at most ``trackers_max`` keys (least recent dropped). It
  also remembers the last TOTP time step each operator used, so a code is good once.

A session carries who signed in (``subject``) and its ``role``; the partner and user pages to
come add their own roles and the partner a session is bound to (``scope``): a page asks
:meth:`Session.allows` and never shows another scope's objects.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

__all__ = ["Session", "SessionStore", "SigninGuard"]


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    csrf_token: str
    subject: str  # who signed in: an operator's name (later a partner's user, an end user)
    role: str  # "operator" now; partner roles (viewer, admin) and "user" come with the ledger
    opened_s: float
    last_seen_s: float
    scope: str = ""  # the partner a partner or user session is bound to; "" for operators
    # Which credential signed in (e.g. a digest of the password's salt): a session whose
    # credential was rotated or removed since is ended by the caller.
    credential: str = ""

    def allows(self, role: str, scope: str = "") -> bool:
        return self.role == role and self.scope == scope


class SessionStore:
    def __init__(self, sessions_max: int, idle_s: float, absolute_s: float) -> None:
        assert sessions_max > 0 and 0 < idle_s <= absolute_s
        self._max = sessions_max
        self._idle_s = idle_s
        self._absolute_s = absolute_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now_s: float) -> bool:
        return (
            now_s - session.last_seen_s >= self._idle_s
            or now_s - session.opened_s >= self._absolute_s
        )

    def open(
        self,
        session_id: str,
        csrf_token: str,
        subject: str,
        role: str,
        now_s: float,
        scope: str = "",
        credential: str = "",
    ) -> Session:
        assert session_id not in self._sessions, "session ids are random: a repeat is a bug"
        self.expire(now_s)
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        session = Session(session_id, csrf_token, subject, role, now_s, now_s, scope, credential)
        self._sessions[session_id] = session
        assert len(self._sessions) <= self._max
        return session

    def get(self, session_id: str, now_s: float) -> Session | None:
        """The live session (its idle clock restarted), or None."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._expired(session, now_s):
            del self._sessions[session_id]
            return None
        session = replace(session, last_seen_s=now_s)
        self._sessions[session_id] = session
        self._sessions.move_to_end(session_id)
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def close_subject(self, subject: str) -> int:
        """End every session of ``subject`` (e.g. its credential was rotated)."""
        ids = [sid for sid, s in self._sessions.items() if s.subject == subject]
        for sid in ids:
            del self._sessions[sid]
        return len(ids)

    def expire(self, now_s: float) -> None:
        for sid in [sid for sid, s in self._sessions.items() if self._expired(s, now_s)]:
            del self._sessions[sid]


class SigninGuard:
    def __init__(self, failures_max: int, lockout_s: float, trackers_max: int) -> None:
        assert failures_max > 0 and lockout_s > 0 and trackers_max > 0
        self._max = failures_max
        self._lockout_s = lockout_s
        self._trackers_max = trackers_max
        # key -> times of its recent failures (at most failures_max), least recent key first
        self._failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._totp_steps: OrderedDict[str, int] = OrderedDict()
        self.failures_total = 0

    def _recent(self, key: str, now_s: float) -> tuple[float, ...]:
        return tuple(t for t in self._failures.get(key, ()) if now_s - t < self._lockout_s)

    def locked_for_s(self, keys: tuple[str, ...], now_s: float) -> float:
        """How long sign-in stays refused for any of ``keys`` (0: it is not)."""
        wait = 0.0
        for key in keys:
            recent = self._recent(key, now_s)
            if len(recent) >= self._max:
                wait = max(wait, recent[0] + self._lockout_s - now_s)
        return wait

    def failed(self, keys: tuple[str, ...], now_s: float) -> int:
        """Count a failure against every key; the most failures any key now has."""
        self.failures_total += 1
        worst = 0
        for key in keys:
            recent = (*self._recent(key, now_s), now_s)[-self._max :]
            self._failures[key] = recent
            self._failures.move_to_end(key)
            worst = max(worst, len(recent))
        while len(self._failures) > self._trackers_max:
            self._failures.popitem(last=False)
        return worst

    def succeeded(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            self._failures.pop(key, None)

    def fresh_totp_step(self, subject: str, step: int) -> bool:
        """True (and remembered) if ``subject`` has not signed in with this or a later step."""
        last = self._totp_steps.get(subject)
        if last is not None and step <= last:
            return False
        self._totp_steps[subject] = step
        self._totp_steps.move_to_end(subject)
        while len(self._totp_steps) > self._trackers_max:
            self._totp_steps.popitem(last=False)
        return True

    @property
    def failures_max(self) -> int:
        return self._max
