"""The path remapping rule: container paths under a volume mount become local paths.

The container's file system does not exist here, so every command element, arg,
env value or ``workingDir`` under a ``volumeMount.mountPath`` is rewritten to the
local directory that backs it (see the package docstring for the exact rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    """A path the container would see and the local path that backs it."""

    container_path: str
    local_path: Path


def remap(value: str, mounts: Sequence[Mount]) -> str:
    """Applies the module's path remapping rule to one command element, arg or env value."""
    for mount in sorted(mounts, key=lambda m: len(m.container_path), reverse=True):
        prefix = mount.container_path.rstrip("/")
        if not prefix:
            continue  # a mount at "/" would swallow every absolute path
        if value == prefix or value.startswith(prefix + "/"):
            return str(mount.local_path) + value[len(prefix) :]
    flag, sep, rest = value.partition("=")
    if sep and flag.startswith("-") and rest:
        remapped = remap(rest, mounts)
        if remapped != rest:
            return f"{flag}={remapped}"
    return value
