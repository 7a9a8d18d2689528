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


def cpu_peak_flops() -> tuple[float, str]:
    """This CPU's fp32 peak, FLOP/s, and how it was derived (an upper bound).

    cores x clock x vector lanes x 2 (a fused multiply-add is two FLOPs) x 2 FMA
    units per core. /proc/cpuinfo gives the cores, the clock (``cpu MHz``, the
    nominal one a KVM guest sees) and the vector width (avx512f: 16 fp32 lanes,
    avx2: 8, else 4); it does not give the number of FMA units, so 2 is assumed,
    as on current Xeon and EPYC server cores. A core that splits 512-bit work
    into two 256-bit halves (AMD Zen 4) reaches half of this bound.
    """
    megahertz, flags = 0.0, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz") and not megahertz:
                megahertz = float(line.split(":", 1)[1])
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = len(os.sched_getaffinity(0))
    peak = cores * megahertz * 1e6 * lanes * 2 * 2
    how = f"{cores} cores x {megahertz / 1000:.2f} GHz x {lanes} fp32 lanes x 2 (FMA) x 2 FMA units"
    return peak, how
