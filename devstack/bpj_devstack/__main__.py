"""``bpj-devstack``: build, start and stop the local stack.

bpj-devstack build        build every component into the cache (no-op when cached)
bpj-devstack up           start the stack; prints the environment to use it
                          (--real-nodes: also the demo's real nodes, with the images)
bpj-devstack down         stop it
bpj-devstack status       print what runs and where
bpj-devstack env          print `export` lines for KUBECONFIG and STORAGE_EMULATOR_HOST
bpj-devstack images ...   build the product's images, export them, compile their locks
                          (`bpj-devstack images --help`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bpj_devstack import build, images, local_cluster, plane


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["images"]:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        return images.main(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="bpj-devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["build", "up", "down", "status", "env"])
    parser.add_argument(
        "--real-nodes",
        action="store_true",
        help="up: also start real nodes (kubelet + containerd; root) with the images imported",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="state, logs and data of the running stack (default: .devstack/)",
    )
    parser.add_argument(
        "--pod-run-for",
        default="2s",
        help="how long fake TPU pods run before they succeed (Go duration)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "build":
        build.build_all()
    elif args.command == "up":
        pools = local_cluster.KUBELET_POOLS if args.real_nodes else ()
        archives = local_cluster.prepare_images().archives if args.real_nodes else ()
        state = plane.up(
            args.run_dir, pod_run_for=args.pod_run_for, kubelet_pools=pools, images=archives
        )
        for key, value in state.env().items():
            print(f"export {key}={value}")
    elif args.command == "down":
        plane.down(args.run_dir)
    elif args.command == "status":
        print(json.dumps(plane.status(args.run_dir), indent=2))
    elif args.command == "env":
        loaded = plane.StackState.load((args.run_dir or plane.default_run_dir()).resolve())
        if loaded is None:
            print("the stack is not running; run `bpj-devstack up`", file=sys.stderr)
            return 1
        for key, value in loaded.env().items():
            print(f"export {key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
