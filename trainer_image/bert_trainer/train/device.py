"""Which device ``train`` runs on, decided before any ML framework loads (pure).

The operator renders ``BERT_TRAINER_DEVICE=tpu`` into every training pod: training
always runs on a TPU slice. A TPU slice whose container sees no TPU chip is a
configuration error (a pod scheduled without its ``google.com/tpu`` request, a
custom image, a node pool that is not a TPU pool): retrying on the same slice cannot
help and burns paid restarts, so ``train`` exits with ``EXIT_BAD_INPUT`` at once. A
chip that is present but cannot be opened (held by another process) is an
infrastructure failure: JAX raises when it initialises the TPU (``JAX_PLATFORMS=tpu``
forbids its silent fallback to CPU) and the trainer exits with ``EXIT_INFRASTRUCTURE``.

Only ``train`` asks: ``prepare`` and ``export`` run the same image on CPU nodes.
Development stacks whose TPU-shaped nodes have no chips say ``BERT_TRAINER_DEVICE=cpu``
(the operator's ``BPJ_TRAINER_ENV_BERT_TRAINER_DEVICE`` setting); unset, the device
is a TPU when a chip and the TPU runtime are both there (tests, a developer's run).

Every TPU slice trains on Keras-on-JAX (``docs/tpu-runtime.md``): the image's
TensorFlow is the standard wheel, which never opens a TPU.
"""

from __future__ import annotations

import glob
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from bert_trainer import contract
from bert_trainer.storage import InputError

Device = Literal["tpu", "cpu"]

TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
"""TPU chips appear as /dev/accelN (v2-v4) or VFIO groups (v5e and later)."""


def tpu_device_files(device_glob: Callable[[str], list[str]] = glob.glob) -> list[str]:
    """The TPU chips' device files this process can see."""
    return sorted(path for pattern in TPU_DEVICE_GLOBS for path in device_glob(pattern))


def tpu_runtime_installed() -> bool:
    """Whether libtpu (jax[tpu]'s TPU plugin, the TPU variant image) is installed."""
    return importlib.util.find_spec("libtpu") is not None


@dataclass(frozen=True)
class DeviceProbe:
    """What the machine offers; tests inject their own (there is no TPU here)."""

    device_files: Callable[[], list[str]] = tpu_device_files
    tpu_runtime: Callable[[], bool] = tpu_runtime_installed


def train_device(environ: Mapping[str, str], probe: DeviceProbe | None = None) -> Device:
    """The device ``train`` runs on; raises InputError for a TPU slice without a TPU."""
    probe = probe or DeviceProbe()
    wanted = environ.get(contract.ENV_DEVICE, "").strip().lower()
    if wanted not in ("", "tpu", "cpu"):
        raise InputError(f"{contract.ENV_DEVICE}={wanted!r}: expected 'tpu' or 'cpu'")
    if wanted == "cpu":
        return "cpu"
    chips = probe.device_files()
    if wanted == "tpu":
        if not chips:
            raise InputError(
                f"{contract.ENV_DEVICE}=tpu (this pod trains on a TPU slice) but the "
                f"container sees no TPU device ({', '.join(TPU_DEVICE_GLOBS)}): the pod "
                "got no TPU chips. Check that it requests google.com/tpu and runs on a "
                "GKE TPU node pool; retrying on this slice cannot help"
            )
        if not probe.tpu_runtime():
            raise InputError(
                f"this pod trains on a TPU slice ({', '.join(chips)}) but its image has "
                "no TPU runtime (libtpu): use the TPU variant of the trainer image "
                "(trainer_image/Dockerfile, VARIANT=tpu)"
            )
        return "tpu"
    return "tpu" if chips and probe.tpu_runtime() else "cpu"
