"""Which hosts of a TPU slice this process trains with (pure; no TensorFlow, no JAX).

GKE gives each host (pod) of a multi-host TPU slice ``TPU_WORKER_ID`` (its
index) and ``TPU_WORKER_HOSTNAMES`` (every host, in index order); the operator
renders both itself, so they are the same on a KWOK node or a laptop. A slice
of more than one host trains with the JAX runtime (``docs/multi-host.md``):
host 0 runs the coordination service on ``JAX_COORDINATOR_PORT`` and every
host connects to it. So does every TPU, one host or several: the image's
TensorFlow is the standard wheel, which never opens a TPU (``docs/tpu-runtime.md``).
One host on CPU trains with TensorFlow unless ``BERT_TRAINER_RUNTIME`` says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bert_trainer import contract
from bert_trainer.storage import InputError
from bert_trainer.train.device import Device

Runtime = Literal["tensorflow", "jax"]


@dataclass(frozen=True)
class SliceHosts:
    """The hosts of a slice and this process's place among them."""

    worker_id: int
    hostnames: tuple[str, ...]
    coordinator_port: int = contract.DEFAULT_COORDINATOR_PORT

    @property
    def size(self) -> int:
        return len(self.hostnames)

    @property
    def is_chief(self) -> bool:
        return self.worker_id == 0

    @property
    def coordinator_address(self) -> str:
        return f"{self.hostnames[0]}:{self.coordinator_port}"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> SliceHosts:
        """Parse the slice from the environment; a process without one is a slice of one.

        Raises InputError for an inconsistent environment (a worker id outside
        the host list, a non-numeric port): each host would otherwise wait for
        peers that never come.
        """
        hostnames = tuple(
            name.strip()
            for name in environ.get(contract.ENV_WORKER_HOSTNAMES, "").split(",")
            if name.strip()
        ) or ("localhost",)
        worker_id = _integer(environ, contract.ENV_WORKER_ID, 0)
        port = _integer(environ, contract.ENV_COORDINATOR_PORT, contract.DEFAULT_COORDINATOR_PORT)
        if not 0 <= worker_id < len(hostnames):
            raise InputError(
                f"{contract.ENV_WORKER_ID}={worker_id} is not the index of one of the "
                f"{len(hostnames)} hosts in {contract.ENV_WORKER_HOSTNAMES}"
            )
        if not 0 < port < 65536:
            raise InputError(f"{contract.ENV_COORDINATOR_PORT}={port} is not a port")
        return cls(worker_id=worker_id, hostnames=hostnames, coordinator_port=port)


def without_proxy_to_peers(
    hosts: SliceHosts, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """Environment that keeps gRPC from tunnelling to the slice's hosts through a proxy.

    JAX's coordination service is gRPC, and gRPC sends every channel through
    ``grpc_proxy``/``https_proxy`` unless its host is in ``no_grpc_proxy`` (or, when
    that is unset, ``no_proxy``). A cluster with an HTTPS proxy for the outside
    world (a corporate egress proxy; the local stack's proxy for TensorFlow's gs://)
    rarely lists the slice's short pod names there, and a proxy that refuses them
    makes the hosts wait for each other until the start-up timeout. Returns
    ``no_grpc_proxy`` with the hosts added to what gRPC would otherwise skip.
    """
    current = environ.get("no_grpc_proxy") or environ.get("no_proxy") or environ.get("NO_PROXY")
    entries = [e.strip() for e in (current or "").split(",") if e.strip()]
    entries += [host for host in hosts.hostnames if host not in entries]
    return {"no_grpc_proxy": ",".join(entries)}


def choose_runtime(
    hosts: SliceHosts, environ: Mapping[str, str] = os.environ, device: Device = "cpu"
) -> Runtime:
    """JAX on a TPU or a slice of several hosts, TensorFlow for one CPU host, unless overridden."""
    wanted = environ.get(contract.ENV_RUNTIME, "").strip().lower()
    if wanted in ("tensorflow", "jax"):
        if wanted == "tensorflow" and hosts.size > 1:
            raise InputError(
                f"{contract.ENV_RUNTIME}=tensorflow cannot train a slice of {hosts.size} "
                "hosts: only the JAX runtime spans hosts (docs/multi-host.md)"
            )
        if wanted == "tensorflow" and device == "tpu":
            raise InputError(
                f"{contract.ENV_RUNTIME}=tensorflow cannot train on a TPU: the image's "
                "TensorFlow is the standard wheel, which does not drive TPUs; TPUs train "
                "on JAX (docs/tpu-runtime.md)"
            )
        return "jax" if wanted == "jax" else "tensorflow"
    if wanted:
        raise InputError(f"{contract.ENV_RUNTIME}={wanted!r}: expected 'tensorflow' or 'jax'")
    return "jax" if hosts.size > 1 or device == "tpu" else "tensorflow"


def _integer(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name}={text!r} is not an integer") from None
