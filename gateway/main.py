"""``baas-gateway``: run the partner API gateway from its TOML config.

The keyring is reloaded while the gateway runs (:mod:`gateway.keyring_reload`): when the file
changes (checked every ``timeouts.keyring_reload_interval_s``) or at once on SIGHUP.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

from aiohttp import web

from gateway.app import GatewayState, build_gateway_app
from gateway.auth import ReplayCache
from gateway.config import GatewayConfig, load_gateway_config
from gateway.dashboard.routes import DashboardState, build_dashboard_app
from gateway.keyring import Keyring, load_keyring, load_master_key
from gateway.keyring_reload import KeyringReloader
from gateway.node_client import NodeClient
from gateway.tls import load_tls_context, reload_tls_context
from node import runtime
from node.api.problem import ProblemAppRunner
from node.config import parse_host_port
from node.errors import BaasError
from node.logs import configure_logging
from node.runtime import tune_gc

log = logging.getLogger("baas.gateway")


def build_state(config: GatewayConfig, master_key: bytes) -> GatewayState:
    keyring = load_keyring(config.keyring_file, master_key)
    token = config.node_api_token_file.read_text().strip()
    return GatewayState(
        config=config,
        keyring=keyring,
        nodes=NodeClient(config.nodes, token, config.limits, config.timeouts),
        replay=ReplayCache(config.limits.replay_cache_entries_max),
        master_key=master_key,
    )


def build_reloader(
    config: GatewayConfig, master_key: bytes, state: GatewayState
) -> KeyringReloader:
    def apply(keyring: Keyring) -> None:
        state.keyring = keyring  # requests read state.keyring afresh: the swap is atomic

    return KeyringReloader(
        config.keyring_file,
        master_key,
        state.keyring,
        apply,
        config.timeouts.keyring_reload_interval_s,
    )


def _on_sighup(
    config: GatewayConfig, reloader: KeyringReloader, tls: ssl.SSLContext | None
) -> None:
    reloader.request_reload()
    if tls is not None and config.tls_cert_file is not None and config.tls_key_file is not None:
        reload_tls_context(tls, config.tls_cert_file, config.tls_key_file)


async def run_gateway(config: GatewayConfig, stop: asyncio.Event) -> None:
    master_key = load_master_key(config.master_key_file)
    tls = None
    if config.tls_cert_file is not None and config.tls_key_file is not None:
        tls = load_tls_context(config.tls_cert_file, config.tls_key_file)  # refuse early
    state = build_state(config, master_key)
    reloader = build_reloader(config, master_key, state)
    token = config.node_api_token_file.read_text().strip()
    dashboard = DashboardState(config, token, state.nodes, gateway=state)
    runner = ProblemAppRunner(
        build_gateway_app(state, build_dashboard_app(dashboard)),
        access_log=None,
        handle_signals=False,
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    reload_task = asyncio.create_task(reloader.run())
    loop.add_signal_handler(signal.SIGHUP, _on_sighup, config, reloader, tls)
    try:
        host, port = parse_host_port(config.http_listen, "gateway.http_listen")
        await web.TCPSite(
            runner, host, port, ssl_context=tls, backlog=config.limits.listen_backlog_max
        ).start()
        tune_gc()
        log.info(
            "gateway ready on %s://%s (%d nodes, keyring version %d)",
            config.scheme,
            config.http_listen,
            len(config.nodes),
            reloader.version,
        )
        log.info("dashboard on %s://%s/dashboard/", config.scheme, config.http_listen)
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        reload_task.cancel()
        await asyncio.gather(reload_task, return_exceptions=True)
        await runner.cleanup()


async def _main(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_gateway(config, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="baas-gateway", description="Run the BaaS partner API gateway."
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        runtime.run(_main(load_gateway_config(args.config)))
    except BaasError as exc:
        log.error("gateway failed: %s (%s)", exc.detail, exc.code)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
