"""The machine a benchmark ran on, for the report (figures are only comparable within one run)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs ({model}), {memory:.1f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
