"""``baas-cluster``: initialise, run, inspect a cluster; render its compose file.

baas-cluster init    --dir .cluster [--nodes 5 --k 3 --n 5] [--chain embedded|anvil|none]
baas-cluster run     --dir .cluster  # init if needed, start chain + 5 nodes + gateway; Ctrl-C
baas-cluster chain-setup --dir .cluster  # deploy the registry on the running chain, fix configs
baas-cluster status  --dir .cluster [--json]   # every node and the gateway at a glance
baas-cluster compose [--out docker-compose.cluster.yml]   # the same cluster as containers
baas-cluster add-node    --dir .cluster      # prepare node-N (joins a running cluster)
baas-cluster announce    --dir .cluster --name node-6   # once it runs: add it through the log
baas-cluster remove-node --dir .cluster --name node-2   # take it out (log), then stop it
baas-cluster members     --dir .cluster      # the committed membership, voters and learners
baas-cluster rejoin-node --dir .cluster --name node-2   # it lost its disk: back as a new member
baas-cluster deposits    --dir .cluster [--limit 100]   # vault deposits held in suspense
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from node.chain.deposit_service import SUSPENSE_PATH
from node.errors import BaasError, ConfigError, OperationFailed
from tools.cluster_init import (
    CHAIN_KINDS,
    DEFAULT_BASE_PORT,
    DEFAULT_CHAIN,
    DEFAULT_K,
    DEFAULT_N,
    DEFAULT_NODES,
    HOST,
    OPERATORS_FILE,
    ClusterLayout,
    add_node,
    init_cluster,
    load_layout,
)
from tools.compose import ComposeSpec, compose_yaml
from tools.local_chain import RegistryOnChain, setup_registry
from tools.local_cluster import LocalCluster
from tools.local_vault import setup_vault
from tools.members import announce, members, rejoin, retire
from tools.status import _get, read_token, run_status


def _print_layout(layout: ClusterLayout, registry: RegistryOnChain | None = None) -> None:
    print(
        f"cluster {layout.cluster_id}: k={layout.k} n={layout.n} write_quorum={layout.write_quorum}"
    )
    for node in layout.nodes:
        print(f"  {node.name}: http://{node.http_addr}  p2p {node.p2p_addr}/p2p/{node.peer_id}")
    print(f"  gateway: {layout.gateway_url}")
    operators = Path(layout.directory) / OPERATORS_FILE
    print(
        f"  dashboard: {layout.gateway_url}/dashboard/ (operators: baas-dashboard operator add "
        f"NAME --file {operators}; partners: baas-partners --config "
        f"{layout.gateway_config_path} dashboard-user add --partner P --name N --role admin, "
        f"then {layout.gateway_url}/dashboard/partner/signin; "
        f"receipt verifier {layout.gateway_url}/dashboard/verify)"
    )
    chain = layout.chain
    if chain.enabled:
        chain_id, contract = (
            (registry.chain_id, registry.contract)
            if registry is not None
            else (chain.expected_chain_id, chain.expected_contract)
        )
        print(
            f"  chain ({chain.kind}, development only): {chain.url} chain id {chain_id}, "
            f"registry {contract}, anchoring nodes {', '.join(chain.anchor_nodes)}"
        )
    else:
        print("  chain: none (anchoring disabled)")
    print(f"  partner credentials: {Path(layout.directory) / 'secrets' / 'partners.json'}")


def _init(args: argparse.Namespace) -> ClusterLayout:
    return init_cluster(
        args.dir,
        nodes=args.nodes,
        k=args.k,
        n=args.n,
        base_port=args.base_port,
        node_hosts=getattr(args, "node_hosts", None),
        gateway_host=getattr(args, "gateway_host", HOST),
        data_dir=getattr(args, "data_dir", "data"),
        exist_ok=getattr(args, "exist_ok", False),
        chain=args.chain,
        anchor_nodes=args.anchor_nodes,
        chain_host=getattr(args, "chain_host", HOST),
        chain_port=getattr(args, "chain_port", None),
    )


def _chain_setup(args: argparse.Namespace) -> int:
    layout = load_layout(args.dir)
    registry = setup_registry(layout, wait_s=args.wait)
    vault = setup_vault(layout)
    document = {
        "url": registry.url,
        "chain_id": registry.chain_id,
        "contract": registry.contract,
        "owner": registry.owner,
        "submitters": list(registry.submitters),
        "deployed": registry.deployed,
        "vault": vault.vault,
        "token": vault.token,
    }
    print(json.dumps(document))
    return 0


def _deposits(args: argparse.Namespace) -> int:
    """The suspense list from the first node that answers (each answers from its state)."""
    layout = load_layout(args.dir)
    headers = {"Authorization": f"Bearer {read_token(args.dir)}"}
    for node in layout.nodes:
        url = f"http://{node.http_addr}{SUSPENSE_PATH}?limit={args.limit}"
        try:
            code, _, body = _get(url, headers, args.timeout)
        except OSError:
            continue
        if code == 200:
            print(json.dumps(json.loads(body), indent=2))
            return 0
    raise OperationFailed("no node answered the suspense list")


def _hosts(value: str) -> tuple[str, ...]:
    return tuple(host.strip() for host in value.split(","))


def _compose(args: argparse.Namespace) -> int:
    text = compose_yaml(ComposeSpec())
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


def _membership(args: argparse.Namespace) -> int:
    if args.command == "add-node":
        node = add_node(args.dir)
        print(f"prepared {node.name}: peer {node.peer_id}, config {node.config_path}")
        print(
            f"start it (baas-node --config {node.config_path}), then: baas-cluster announce "
            f"--dir {args.dir} --name {node.name}"
        )
        return 0
    layout = load_layout(args.dir)
    by_name = {node.name: node for node in layout.nodes}
    target = by_name.get(getattr(args, "name", "") or "")
    if args.command != "members" and target is None:
        raise ConfigError(f"no node named {args.name!r} in {args.dir}")
    others = [n for n in layout.nodes if target is None or n.name != target.name]
    last: BaasError | None = None
    for via in others:  # any running node will do: it forwards to the leader
        try:
            if args.command == "members":
                answer = members(layout, via)
            elif args.command == "announce":
                assert target is not None
                answer = announce(layout, target, via)
            elif args.command == "rejoin-node":
                assert target is not None
                answer = rejoin(layout, target, via)
                print(
                    f"{target.name} will join as a new member: start it again "
                    f"(baas-node --config {target.config_path})"
                )
            else:
                assert target is not None
                answer = retire(layout, target, via)
        except OperationFailed as exc:
            last = exc
            continue
        print(json.dumps(answer, indent=2))
        return 0
    raise last or OperationFailed("no node answered")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="baas-cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "run"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, default=Path(".cluster"))
        p.add_argument("--nodes", type=int, default=DEFAULT_NODES)
        p.add_argument("--k", type=int, default=DEFAULT_K)
        p.add_argument("--n", type=int, default=DEFAULT_N)
        p.add_argument(
            "--base-port", type=int, default=DEFAULT_BASE_PORT, help="0 picks free ports"
        )
        p.add_argument(
            "--chain",
            choices=CHAIN_KINDS,
            default=DEFAULT_CHAIN,
            help="the development chain the nodes anchor to (default: embedded, in memory)",
        )
        p.add_argument(
            "--anchor-nodes",
            type=int,
            default=None,
            help="how many nodes hold a chain key (default 3)",
        )
        if name == "init":
            p.add_argument(
                "--node-hosts",
                type=_hosts,
                default=None,
                help="one IP per node, comma-separated (default 127.0.0.1 for all)",
            )
            p.add_argument("--gateway-host", default=HOST, help="the gateway's listen IP")
            p.add_argument(
                "--data-dir", default="data", help="node data dir (relative to its config)"
            )
            p.add_argument("--chain-host", default=HOST, help="the chain's listen IP")
            p.add_argument(
                "--chain-port", type=int, default=None, help="default: after the gateway's"
            )
            p.add_argument(
                "--exist-ok",
                action="store_true",
                help="accept an existing cluster of the same shape instead of refusing",
            )
    status = sub.add_parser("status", help="every node and the gateway at a glance")
    status.add_argument("--dir", type=Path, default=Path(".cluster"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--timeout", type=float, default=2.0, help="per request, seconds")
    for name, text in (
        ("add-node", "prepare one more node (identity, ports, config) to join the cluster"),
        ("announce", "add a prepared, running node to the cluster through the log"),
        ("remove-node", "take a node out of the cluster through the log"),
        ("members", "the committed membership, voters and learners"),
        (
            "rejoin-node",
            "bring back a node whose data directory was lost, as a new member (stop it first)",
        ),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, default=Path(".cluster"))
        if name in ("announce", "remove-node", "rejoin-node"):
            p.add_argument("--name", required=True, help="the node, e.g. node-6")
    chain_setup = sub.add_parser(
        "chain-setup", help="deploy the registry on the cluster's running chain, fix configs"
    )
    chain_setup.add_argument("--dir", type=Path, default=Path(".cluster"))
    chain_setup.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the chain to answer"
    )
    deposits = sub.add_parser("deposits", help="vault deposits held in suspense (unknown wallets)")
    deposits.add_argument("--dir", type=Path, default=Path(".cluster"))
    deposits.add_argument("--limit", type=int, default=100, help="at most this many (1..1000)")
    deposits.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    compose = sub.add_parser("compose", help="render docker-compose.cluster.yml")
    compose.add_argument("--out", type=Path, default=None, help="default: stdout")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            _print_layout(_init(args))
            return 0
        if args.command == "status":
            return run_status(args.dir, as_json=args.json, timeout_s=args.timeout)
        if args.command == "compose":
            return _compose(args)
        if args.command == "chain-setup":
            return _chain_setup(args)
        if args.command == "deposits":
            return _deposits(args)
        if args.command in ("add-node", "announce", "remove-node", "rejoin-node", "members"):
            return _membership(args)
        layout = load_layout(args.dir) if (args.dir / "cluster.json").exists() else _init(args)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with LocalCluster(layout) as cluster:
            cluster.start()
            _print_layout(layout, cluster.registry)
            print("cluster is ready; Ctrl-C stops it")
            sys.stdout.flush()
            stop.wait()
            print("stopping ...")
        return 0
    except BaasError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
