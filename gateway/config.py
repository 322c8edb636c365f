"""The gateway's typed configuration, loaded from TOML and validated at start.

Tables: ``[gateway]`` (listen address, keyring and master key files, node API token file),
``[[nodes]]`` (name and HTTP address of every node the gateway may use), ``[limits]`` (every
bound a named ``_max`` field), ``[timeouts]`` and ``[dashboard]`` (the web dashboard: operator
credentials file, the chain RPC its pages may call, session and sign-in bounds) and
``[webhooks]`` (the deliverer: :class:`WebhooksConfig`).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from business.ledger.views import LIST_LIMIT_MAX
from business.payments.delivery import DeliveryLimits
from business.payments.webhooks import WebhookConfig
from node.config import (
    build_dataclass,
    parse_host_port,
    read_toml,
    require_positive_fields,
    resolve_path,
)
from node.errors import ConfigError

__all__ = [
    "DashboardConfig",
    "GatewayConfig",
    "GatewayLimits",
    "GatewayTimeouts",
    "NodeEndpoint",
    "WebhooksConfig",
    "load_gateway_config",
]

# A linked chain is one operation; the node takes at most 64 events per operation
# (node/consensus/ledger_ops.py OPERATION_EVENTS_MAX), a few kept for the events the API adds.
LINKED_TRANSFERS_MAX = 60


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    name: str
    http_addr: str


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    http_body_bytes_max: int = 8 * 1024 * 1024
    record_json_bytes_max: int = 256 * 1024
    records_per_batch_max: int = 500
    # The ledger API (gateway/ledger_routes.py): operations per POST /v1/ledger/transfers/batch
    # and transfers per linked chain (the node takes at most 64 events per operation).
    ledger_batch_operations_max: int = 100
    ledger_linked_transfers_max: int = 32
    # Lists (GET /v1/ledger/accounts, /v1/ledger/transfers): objects per page (at most the
    # nodes' LIST_LIMIT_MAX), and node calls one page may take: each node call walks at most
    # the node's ledger_list_scan_keys_max keys where its index by partner is incomplete (a
    # ledger upgraded to log feature 13 with objects in it), the next goes on; with the index
    # complete a page is one call.
    ledger_list_limit_max: int = 100
    ledger_list_node_calls_max: int = 8
    inflight_requests_max: int = 512
    # Connections the kernel queues for the gateway before it accepts them (capped by the
    # kernel's net.core.somaxconn). aiohttp's default, 128, overflows when hundreds of clients
    # connect at once: the kernel drops their SYNs and each retries after 1 s, then 3 s (a CI
    # run's overload test saw admitted p99 5.6 s that way, with the gateway's queues short).
    listen_backlog_max: int = 2048
    node_connections_max: int = 64
    replay_cache_entries_max: int = 200_000
    signature_window_s: int = 300
    # Coalescing of record traffic to the nodes (node/batcher.py): records and bytes per node
    # call (the node's records_per_request_max and http_body_bytes_max must allow them), node
    # calls in flight per operation, and records queued before the gateway answers 503.
    node_batch_records_max: int = 500
    node_batch_bytes_max: int = 4 * 1024 * 1024
    node_calls_inflight_max: int = 2  # few calls in flight: records gather into bigger ones
    # Of those, coalesced write calls that may go out with fewer than node_batch_records_max
    # records; another starts only with a full batch or once the oldest has run
    # node_write_call_stalled_s. Every write call costs the cluster the same rounds (shard puts
    # to every holder, a forward to the leader, a log entry) whatever it carries, and with one
    # call in flight the records of every waiting request share the next (docs/performance.md,
    # "Records per round"). An idle gateway still sends a lone record at once.
    node_write_calls_unfilled_max: int = 1
    queue_records_max: int = 20_000
    # One partner may have at most this many records in flight; more gets 429 (fairness).
    partner_inflight_records_max: int = 10_000
    # A node reporting its queue at least this full gets no new work while others have room;
    # when every node is that full the gateway answers 503 with Retry-After.
    node_queue_fill_max_percent: int = 80
    retry_after_s_max: int = 30
    # Signed requests per API credential (gateway/rate_limit.py): this many per second on
    # average, bursts of up to credential_burst_requests_max; past it 429 with Retry-After.
    # Buckets for at most credential_buckets_max credentials are kept (least recent dropped).
    credential_requests_per_s: int = 5_000
    credential_burst_requests_max: int = 10_000
    credential_buckets_max: int = 100_000

    def validate(self) -> None:
        require_positive_fields(self, "limits", integers_only=True)
        if self.ledger_linked_transfers_max > LINKED_TRANSFERS_MAX:
            raise ConfigError(
                f"limits.ledger_linked_transfers_max must be at most {LINKED_TRANSFERS_MAX}"
            )
        if self.ledger_list_limit_max > LIST_LIMIT_MAX:
            raise ConfigError(f"limits.ledger_list_limit_max must be at most {LIST_LIMIT_MAX}")
        if self.node_queue_fill_max_percent > 100:
            raise ConfigError("limits.node_queue_fill_max_percent must be at most 100")
        if self.node_write_calls_unfilled_max > self.node_calls_inflight_max:
            raise ConfigError(
                "limits.node_write_calls_unfilled_max must be at most node_calls_inflight_max"
            )


@dataclass(frozen=True, slots=True)
class GatewayTimeouts:
    node_request_s: float = 15.0
    health_interval_s: float = 1.0
    keyring_reload_interval_s: float = 1.0  # how often the keyring file is checked for changes
    # How long a record may wait to share a node call with other requests' records.
    coalesce_window_s: float = 0.002
    # A coalesced write call running this long no longer holds the next back (a slow or hung
    # node must not stall every write behind it): see limits.node_write_calls_unfilled_max.
    node_write_call_stalled_s: float = 1.0
    # While node calls hold the gateway's queued records back longer than this (the oldest
    # running call, or waiting records while every call slot is busy), new records are
    # refused with 503 and a Retry-After: under overload an admitted request's wait stays
    # bounded even when the cluster's rate drops, instead of growing toward the deadline.
    # Half the deadline: a record admitted later would rarely finish within it.
    queue_wait_s_max: float = 5.0
    # Every partner request gets this long end to end; nodes get the remaining budget and
    # stop work the caller no longer waits for.
    request_deadline_s: float = 10.0

    def validate(self) -> None:
        require_positive_fields(self, "timeouts", integers_only=False)
        if self.queue_wait_s_max >= self.request_deadline_s:
            raise ConfigError("timeouts.queue_wait_s_max must be below request_deadline_s")


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """The web dashboard under ``/dashboard`` (:mod:`gateway.dashboard`)."""

    # Operator credentials (``baas-dashboard operator add``); read again at every sign-in so a
    # rotation takes effect at once. None or a missing file: no operator can sign in.
    operators_file: Path | None = None
    # Partners' dashboard users (``baas-partners dashboard-user add``), read at every partner
    # sign-in and page like the operators file. None or a missing file: no partner signs in.
    partner_users_file: Path | None = None
    # The chain JSON-RPC the receipt verifier reads by default: the one host other than the
    # gateway that pages may call (the Content-Security-Policy's connect-src). Empty: none.
    chain_rpc_url: str = ""
    sessions_max: int = 1_000
    session_idle_s: int = 15 * 60
    session_absolute_s: int = 8 * 3600
    # After this many failed sign-ins of one operator name, or from one client address, within
    # signin_lockout_s, sign-in is refused (429) until the window has passed.
    signin_failures_max: int = 5
    signin_lockout_s: int = 300
    signin_trackers_max: int = 10_000  # names and addresses whose failures are remembered
    requests_inflight_max: int = 64
    form_bytes_max: int = 16 * 1024
    node_status_timeout_s: float = 2.0
    anchors_shown_max: int = 10
    # Pages of the swaps list (limits.ledger_list_limit_max each) the partner overview's swap
    # volume chart reads at most; past them it says the window was truncated.
    swap_volume_pages_max: int = 5

    def validate(self) -> None:
        require_positive_fields(
            self,
            "dashboard",
            integers_only=False,
            skip=("operators_file", "partner_users_file", "chain_rpc_url"),
        )
        if not isinstance(self.chain_rpc_url, str):
            raise ConfigError("dashboard.chain_rpc_url must be a string")
        if self.chain_rpc_url:
            parsed = urllib.parse.urlsplit(self.chain_rpc_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError("dashboard.chain_rpc_url must be an http(s):// URL")
        if self.session_idle_s > self.session_absolute_s:
            raise ConfigError("dashboard.session_idle_s must not exceed session_absolute_s")


@dataclass(frozen=True, slots=True)
class WebhooksConfig:
    """``[webhooks]``: the URL rule every gateway applies, and the deliverer (docs/webhooks.md).

    Exactly one gateway of a cluster should set ``deliver``: it reads the outbox, keeps the
    local queue in ``data_dir`` (LevelDB) and acknowledges the log; two would deliver every
    event twice (harmless for receivers that deduplicate, but twice the traffic).
    """

    deliver: bool = False
    data_dir: Path | None = None  # required when deliver
    # SSRF: hosts (as written in URLs, lower case) admitted although private or loopback,
    # and the switch that admits every address (development only).
    allow_hosts: tuple[str, ...] = ()
    allow_private_addresses: bool = False
    attempt_timeout_s: float = 10.0
    poll_interval_s: float = 0.5  # how often the outbox is read when idle
    events_page_max: int = 100  # events per outbox read (the node's cap is 1000)
    body_bytes_max: int = 64 * 1024  # a payload larger than this is cut to the bare event
    rotation_overlap_s: int = 86_400  # both secrets sign this long after a rotation
    limits: DeliveryLimits = field(default_factory=DeliveryLimits)
    schedule: WebhookConfig = field(default_factory=WebhookConfig)

    def validate(self) -> None:
        require_positive_fields(
            self,
            "webhooks",
            integers_only=False,
            skip=("deliver", "data_dir", "allow_hosts", "allow_private_addresses", "limits",
                  "schedule"),
        )  # fmt: skip
        if not isinstance(self.deliver, bool) or not isinstance(self.allow_private_addresses, bool):
            raise ConfigError("webhooks.deliver and allow_private_addresses are true or false")
        if self.deliver and self.data_dir is None:
            raise ConfigError("webhooks.deliver needs webhooks.data_dir (the local queue)")
        if self.events_page_max > 1000:
            raise ConfigError("webhooks.events_page_max must be at most 1000 (the node's cap)")
        if not all(isinstance(h, str) and h for h in self.allow_hosts):
            raise ConfigError("webhooks.allow_hosts is a list of host names or addresses")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    http_listen: str
    keyring_file: Path
    master_key_file: Path | None
    node_api_token_file: Path
    nodes: tuple[NodeEndpoint, ...]
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    timeouts: GatewayTimeouts = field(default_factory=GatewayTimeouts)
    # HTTPS when both are set (gateway/tls.py); plain HTTP (e.g. behind a TLS proxy) when
    # neither is.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"

    def validate(self) -> None:
        parse_host_port(self.http_listen, "gateway.http_listen")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("gateway: set both tls_cert_file and tls_key_file, or neither")
        if not self.nodes:
            raise ConfigError("[[nodes]]: the gateway needs at least one node")
        for node in self.nodes:
            parse_host_port(node.http_addr, f"nodes.{node.name}.http_addr")
        self.limits.validate()
        self.timeouts.validate()
        self.dashboard.validate()
        self.webhooks.validate()


def load_gateway_config(path: Path) -> GatewayConfig:
    raw = read_toml(path)
    base = path.parent.resolve()
    table = raw.get("gateway", {})
    known = {
        "http_listen",
        "keyring_file",
        "master_key_file",
        "node_api_token_file",
        "tls_cert_file",
        "tls_key_file",
    }
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[gateway] unknown keys: {', '.join(unknown)}")
    master = table.get("master_key_file")
    cert, key = table.get("tls_cert_file"), table.get("tls_key_file")
    config = GatewayConfig(
        http_listen=str(table.get("http_listen", "")),
        keyring_file=resolve_path(base, table.get("keyring_file"), "gateway.keyring_file"),
        master_key_file=resolve_path(base, master, "gateway.master_key_file") if master else None,
        node_api_token_file=resolve_path(
            base, table.get("node_api_token_file"), "gateway.node_api_token_file"
        ),
        nodes=tuple(build_dataclass(NodeEndpoint, n, "nodes") for n in raw.get("nodes", [])),
        limits=build_dataclass(GatewayLimits, raw.get("limits", {}), "limits"),
        timeouts=build_dataclass(GatewayTimeouts, raw.get("timeouts", {}), "timeouts"),
        tls_cert_file=resolve_path(base, cert, "gateway.tls_cert_file") if cert else None,
        tls_key_file=resolve_path(base, key, "gateway.tls_key_file") if key else None,
        dashboard=_dashboard_config(base, raw.get("dashboard", {})),
        webhooks=_webhooks_config(base, raw.get("webhooks", {})),
    )
    config.validate()
    return config


def _dashboard_config(base: Path, table: dict[str, Any]) -> DashboardConfig:
    values = dict(table)
    for name in ("operators_file", "partner_users_file"):
        if name in values:
            values[name] = resolve_path(base, values[name], f"dashboard.{name}")
    return build_dataclass(DashboardConfig, values, "dashboard")


def _webhooks_config(base: Path, table: dict[str, Any]) -> WebhooksConfig:
    """``[webhooks]`` with its bounds inline: the delivery limits and the retry schedule's
    fields (``base_delay_s``, ``attempts_max``, ...) sit in the one table."""
    limit_names = set(DeliveryLimits.__dataclass_fields__)
    schedule_names = set(WebhookConfig.__dataclass_fields__)
    values = {k: v for k, v in table.items() if k not in limit_names | schedule_names}
    if "data_dir" in values:
        values["data_dir"] = resolve_path(base, values["data_dir"], "webhooks.data_dir")
    if "allow_hosts" in values:
        hosts = values["allow_hosts"]
        if not isinstance(hosts, list):
            raise ConfigError("webhooks.allow_hosts is a list of host names or addresses")
        values["allow_hosts"] = tuple(str(h).lower() for h in hosts)
    values["limits"] = build_dataclass(
        DeliveryLimits, {k: v for k, v in table.items() if k in limit_names}, "webhooks"
    )
    values["schedule"] = build_dataclass(
        WebhookConfig, {k: v for k, v in table.items() if k in schedule_names}, "webhooks"
    )
    return build_dataclass(WebhooksConfig, values, "webhooks")
