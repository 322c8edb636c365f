"""``baas-cluster``: initialise and run a local cluster.

baas-cluster init --dir .cluster [--nodes 5 --k 3 --n 5]
baas-cluster run  --dir .cluster     # init if needed, start 5 nodes + gateway, wait for Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from node.errors import BaasError
from tools.cluster_init import ClusterLayout, init_cluster, load_layout
from tools.local_cluster import LocalCluster


def _print_layout(layout: ClusterLayout) -> None:
    print(
        f"cluster {layout.cluster_id}: k={layout.k} n={layout.n} write_quorum={layout.write_quorum}"
    )
    for node in layout.nodes:
        print(f"  {node.name}: http://{node.http_addr}  p2p {node.p2p_addr}/p2p/{node.peer_id}")
    print(f"  gateway: {layout.gateway_url}")
    print(f"  partner credentials: {Path(layout.directory) / 'secrets' / 'partners.json'}")


def _init(args: argparse.Namespace) -> ClusterLayout:
    return init_cluster(args.dir, nodes=args.nodes, k=args.k, n=args.n, base_port=args.base_port)


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
        p.add_argument("--nodes", type=int, default=5)
        p.add_argument("--k", type=int, default=3)
        p.add_argument("--n", type=int, default=5)
        p.add_argument("--base-port", type=int, default=7100, help="0 picks free ports")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            _print_layout(_init(args))
            return 0
        layout = load_layout(args.dir) if (args.dir / "cluster.json").exists() else _init(args)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with LocalCluster(layout) as cluster:
            cluster.start()
            _print_layout(layout)
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
