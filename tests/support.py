"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Kubectl(Protocol):
    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]: ...


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kubectl_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


@dataclass(frozen=True)
class DemoRun:
    """One ``./dev demo`` run (the ``demo_run`` fixture): its run directory and output.

    The run directory keeps ``logs/``, ``pods/`` (each pod's log and kubeconfig),
    ``pki/`` and ``objects.json`` (the job and its children, saved before the stack
    stopped).
    """

    run_dir: Path
    returncode: int
    stdout: str
    stderr: str
