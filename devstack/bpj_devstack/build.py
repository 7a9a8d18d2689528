"""Build the stack's binaries from their wrapper Go modules into the cache.

A component is rebuilt only when its cache directory lacks the completion
stamp, so a warm cache makes ``up`` take seconds. Builds are atomic: binaries go
to a temporary directory that is renamed into place once every one of them built.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from bpj_devstack.versions import ALL_COMPONENTS, Component, cache_root

log = logging.getLogger(__name__)

_STAMP = ".complete"


def bin_dir(component: Component) -> Path:
    return cache_root() / component.cache_key() / "bin"


def is_built(component: Component) -> bool:
    return (bin_dir(component).parent / _STAMP).exists()


def binary(component: Component, name: str) -> Path:
    """Path to one built binary; raises if the component has not been built."""
    if not is_built(component):
        raise FileNotFoundError(
            f"{component.name} {component.version} is not built; run `bpj-devstack build`"
        )
    return bin_dir(component) / name


def build(component: Component) -> Path:
    """Build one component (if not cached) and return its bin directory."""
    target = bin_dir(component)
    if is_built(component):
        return target
    if shutil.which("go") is None:
        raise RuntimeError("Go is required to build the local stack (https://go.dev/dl)")
    staging = target.parent.with_name(target.parent.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    started = time.monotonic()
    for name, package in component.packages.items():
        log.info("building %s from %s (%s)", name, package, component.version)
        ldflags = " ".join(("-s", "-w", *component.ldflags))
        subprocess.run(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                ldflags,
                "-o",
                str(staging / "bin" / name),
                package,
            ],
            cwd=component.module_dir,
            env=env,
            check=True,
        )
    (staging / _STAMP).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    shutil.rmtree(target.parent, ignore_errors=True)
    staging.rename(target.parent)
    return target


def build_all() -> None:
    for component in ALL_COMPONENTS:
        build(component)
