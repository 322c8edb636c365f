"""Keyring reload without restart: a gateway picks up ``baas-keys`` changes while serving.

:class:`KeyringReloader` watches the keyring file. Every ``keyring_reload_interval_s`` (gateway
config, ``[timeouts]``) it compares the file's identity (inode, size, mtime) with the last one it
saw; on SIGHUP it reloads regardless. A changed file is decrypted and checked in full before it is
used, and it must carry a higher version than the keyring in use. A file that fails any check (not
readable, tampered, wrong master key, malformed, an older or equal version: a rollback) is refused
and logged, and the keyring in use stays: the gateway never drops to no keys. ``baas-keys`` writes
the file atomically (:func:`gateway.keyring.save_keyring`), so a reload never sees half a file.

Nothing secret is logged: versions, partner counts and error details only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.keyring import Keyring, load_keyring
from node.errors import BaasError

__all__ = ["KeyringReloader", "ReloadCounters"]

log = logging.getLogger("baas.gateway.keyring")

FileIdentity = tuple[int, int, int, int, int]  # device, inode, size, mtime and ctime in ns


@dataclass(slots=True)
class ReloadCounters:
    checks: int = 0
    applied: int = 0
    refused: int = 0


def _identity(path: Path) -> FileIdentity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyringReloader:
    """Reloads ``path`` into ``apply`` when it changes; keeps the current keyring on any error."""

    def __init__(
        self,
        path: Path,
        master_key: bytes,
        current: Keyring,
        apply: Callable[[Keyring], None],
        interval_s: float,
    ) -> None:
        self._path = path
        self._master_key = master_key
        self._current = current
        self._apply = apply
        self._interval_s = interval_s
        self._seen = _identity(path)
        self._forced = False
        self._wake = asyncio.Event()
        self.counters = ReloadCounters()

    @property
    def version(self) -> int:
        return self._current.version

    def request_reload(self) -> None:
        """Reload at once, even if the file looks unchanged (the SIGHUP handler calls this)."""
        self._forced = True
        self._wake.set()

    def check(self) -> bool:
        """Reload if the file changed; True when a new keyring was applied."""
        self.counters.checks += 1
        identity = _identity(self._path)
        if identity == self._seen and not self._forced:
            return False
        self._seen = identity  # a refused (or missing) file is reported once, not every check
        self._forced = False
        try:
            candidate = load_keyring(self._path, self._master_key)
        except BaasError as exc:
            self._refuse(f"{exc.detail} ({exc.code})")
            return False
        if candidate.version <= self._current.version:
            if candidate.version < self._current.version or candidate != self._current:
                self._refuse(
                    f"version {candidate.version} is not newer than {self._current.version} "
                    "(a rollback or a copy)"
                )
            return False
        previous = self._current.version
        self._current = candidate
        self._apply(candidate)
        self.counters.applied += 1
        log.info(
            "keyring reloaded: version %d -> %d (%d partners)",
            previous,
            candidate.version,
            len(candidate.partners),
        )
        return True

    def _refuse(self, reason: str) -> None:
        self.counters.refused += 1
        log.error(
            "keyring %s refused, keeping version %d: %s",
            self._path,
            self._current.version,
            reason,
        )

    async def run(self) -> None:
        """Check on every interval or SIGHUP until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
            self._wake.clear()
            self.check()
