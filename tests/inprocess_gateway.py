"""The real gateway (``run_gateway``, as ``baas-gateway`` runs it) in this process, without nodes.

For tests of what the gateway decides alone (authentication, rate limits, API versions, bad
input refused before any node call): a cluster layout is made for its keyring and config, the
gateway listens on loopback, and the nodes it names are never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from openapi_check import CheckedPartnerClient

from gateway.config import load_gateway_config
from gateway.main import run_gateway
from tools.cluster_init import ClusterLayout, init_cluster, set_toml_keys

__all__ = ["client_of", "gateway_without_nodes"]


@contextlib.asynccontextmanager
async def gateway_without_nodes(
    directory: Path,
    limits: Mapping[str, object] | None = None,
    dashboard: Mapping[str, object] | None = None,
    prepare: Callable[[ClusterLayout], None] | None = None,
    partners: tuple[str, ...] = ("shop-a", "shop-b"),
) -> AsyncIterator[ClusterLayout]:
    """``prepare`` runs on the layout before the gateway starts (to add keyring entries)."""
    layout = init_cluster(directory, partners=partners, chain="none")
    config_path = Path(layout.gateway_config_path)
    if limits:
        config_path.write_text(set_toml_keys(config_path.read_text(), "limits", limits))
    if dashboard:
        config_path.write_text(set_toml_keys(config_path.read_text(), "dashboard", dashboard))
    if prepare is not None:
        prepare(layout)
    stop = asyncio.Event()
    gateway = asyncio.create_task(run_gateway(load_gateway_config(config_path), stop))
    try:
        await _until_up(layout.gateway_url, gateway)
        yield layout
    finally:
        stop.set()
        await asyncio.wait_for(gateway, timeout=30)


def client_of(layout: ClusterLayout, partner: str) -> CheckedPartnerClient:
    credentials = layout.partners[partner]
    return CheckedPartnerClient(
        layout.gateway_url, credentials["api_key"], bytes.fromhex(credentials["secret_hex"])
    )


async def _until_up(url: str, task: asyncio.Task[None]) -> None:
    for _ in range(200):
        if task.done():
            task.result()  # raises what stopped it
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"{url}/healthz", timeout=1)
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not come up")
