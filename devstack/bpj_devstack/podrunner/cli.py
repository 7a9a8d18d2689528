"""The runner's command line: pool specs, ``podrunner_argv`` and ``main``.

``podrunner_argv`` builds the ``python -m bpj_devstack.podrunner ...`` command the
stack spawns; ``argument_parser`` and ``main`` parse it and run a ``PodRunner`` in
the foreground until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from bpj_devstack.kwok_config import NodePool
from bpj_devstack.podrunner.runner import PodRunner


def pool_spec(pool: NodePool) -> str:
    """``NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot]``; a CPU pool leaves the middle empty."""
    spec = ":".join(
        [
            pool.name,
            pool.accelerator or "",
            pool.topology or "",
            str(pool.nodes),
            str(pool.chips_per_node),
        ]
    )
    return spec + (":spot" if pool.spot else "")


def parse_pool(spec: str) -> NodePool:
    """The inverse of ``pool_spec``."""
    parts = spec.split(":")
    if len(parts) not in (5, 6) or (len(parts) == 6 and parts[5] != "spot"):
        raise ValueError(f"pool {spec!r}: expected NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot]")
    name, accelerator, topology, nodes, chips = parts[:5]
    if not name or bool(accelerator) != bool(topology):
        raise ValueError(f"pool {spec!r}: needs a name, and a topology exactly with an accelerator")
    return NodePool(
        name,
        nodes=int(nodes),
        accelerator=accelerator or None,
        topology=topology or None,
        chips_per_node=int(chips),
        spot=len(parts) == 6,
    )


def podrunner_argv(
    kubeconfig: Path | str,
    pools: Sequence[NodePool],
    workdir: Path | str,
    *,
    extra_env: Mapping[str, str] | None = None,
    python: str | None = None,
    apiserver_url: str | None = None,
    ca_path: Path | str | None = None,
    log_level: str = "INFO",
) -> list[str]:
    """The command line that runs a ``PodRunner`` in the foreground (for the stack's spawner)."""
    argv = [
        sys.executable,
        "-m",
        "bpj_devstack.podrunner",
        "--kubeconfig",
        str(kubeconfig),
        "--workdir",
        str(workdir),
        "--log-level",
        log_level,
    ]
    for pool in pools:
        argv += ["--pool", pool_spec(pool)]
    for key, value in sorted((extra_env or {}).items()):
        argv += ["--env", f"{key}={value}"]
    if python:
        argv += ["--python", python]
    if apiserver_url:
        argv += ["--apiserver-url", apiserver_url]
    if ca_path:
        argv += ["--ca", str(ca_path)]
    return argv


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bpj_devstack.podrunner",
        description="Run pods bound to local nodes as processes (development only).",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument(
        "--pool",
        required=True,
        action="append",
        type=parse_pool,
        help="NAME:ACCELERATOR:TOPOLOGY:NODES:CHIPS[:spot] (CPU: NAME:::NODES:0)",
    )
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument(
        "--env",
        action="append",
        type=_env_pair,
        default=[],
        help="K=V added to every container's environment",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for containers whose command is python/python3",
    )
    parser.add_argument("--apiserver-url", default=None)
    parser.add_argument("--ca", type=Path, default=None)
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when the runner stops",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = PodRunner(
        args.kubeconfig,
        args.pool,
        args.workdir,
        apiserver_url=args.apiserver_url,
        ca_path=args.ca,
        extra_env=dict(args.env),
        python=args.python,
        stop_grace=args.stop_grace,
    ).start()
    try:
        # Bounded waits so the signal handler's flag is seen promptly.
        while not stop.wait(1.0):
            pass
    finally:
        runner.stop()
    return 0
