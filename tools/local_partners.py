"""Onboard a partner on a local cluster's log, for tests and benchmarks that use the ledger.

From log feature 7 the state machine refuses every ledger operation of a partner the log does
not know (``partner_not_onboarded``): a partner that is only in the keyring (``init_cluster``'s
``partners``) may store records but not move money. This runs the operator's real command,
``baas-partners onboard`` (:mod:`tools.partners_cli`), waiting while the cluster has not yet
enabled feature 7 after its start, and returns the new partner's credentials. The gateway
accepts them at its next keyring reload: until then they are answered 401.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tools.cluster_init import ClusterLayout

__all__ = ["ONBOARD_WAIT_S", "onboard_partner"]

ONBOARD_WAIT_S = 90.0  # a fresh cluster enables feature 7 within seconds; a loaded box is slow
RETRY_S = 0.5


def onboard_partner(
    layout: ClusterLayout, name: str, *, wait_s: float = ONBOARD_WAIT_S
) -> dict[str, tuple[str, bytes]]:
    """``{"test": (api_key, secret), "live": (...)}`` of the newly onboarded partner."""
    deadline = time.monotonic() + wait_s
    while True:
        run = subprocess.run(
            [sys.executable, "-m", "tools.partners_cli", "--config",
             layout.gateway_config_path, "onboard", "--partner", name],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if run.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"onboarding {name} failed: {run.stderr.strip()[-400:]}")
        time.sleep(RETRY_S)
    onboarded = json.loads(run.stdout)
    return {
        "live" if c["livemode"] else "test": (str(c["id"]), bytes.fromhex(c["secret"]))
        for c in onboarded["credentials"]
    }
