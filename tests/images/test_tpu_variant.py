"""The TPU variant's package set resolves and imports on CPU, as docs/tpu-runtime.md says.

CI builds the CPU image only; the TPU variant is proven on its lock
(``trainer_image/requirements-tpu.lock``) installed into a virtual environment
cached by the lock's hash (``bpj_devstack.images.tpu_venv``; made by ``./dev
setup``, so a warm run installs nothing). The product runs from the source tree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from bert_trainer import contract
from bpj_devstack import images

pytestmark = pytest.mark.images


@pytest.fixture(scope="module")
def venv() -> Path:
    return images.tpu_venv()


def run(
    venv: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KERAS", "JAX"))
    }
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        env={**inherited, **images.tpu_venv_env(venv), **(env or {})},
        cwd=images.REPO_ROOT,
        timeout=600,
        check=False,
    )


def test_the_tpu_lock_is_what_is_installed(venv: Path) -> None:
    lock = (images.REPO_ROOT / images.TPU_LOCK.path).read_text()
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", lock, re.MULTILINE))
    result = run(
        venv,
        "-c",
        "import importlib.metadata as md, json; "
        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in md.distributions()}))",
    )
    assert result.returncode == 0, result.stderr
    installed = {name.replace("_", "-"): v for name, v in json.loads(result.stdout).items()}
    assert {name: installed.get(name) for name in pins} == pins
    assert "libtpu" in installed and "tensorflow" in installed


def test_the_tpu_runtime_imports_on_cpu(venv: Path) -> None:
    # What train runs on a TPU (JAX, Keras on JAX, the multi-host module), on CPU here.
    result = run(
        venv,
        "-c",
        "import libtpu, jax, keras, keras_hub, tensorflow_text, bert_trainer.train.multihost; "
        "print(keras.backend.backend(), jax.__version__, [d.platform for d in jax.devices()])",
        env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    backend, _, platforms = result.stdout.split(maxsplit=2)
    assert backend == "jax" and platforms.strip() == "['cpu']"
    # prepare and export run the same image with TensorFlow.
    result = run(
        venv, "-c", "import bert_trainer.prepare, bert_trainer.export.run, bert_trainer.train.run"
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_tensorflow_never_loads_libtpu(venv: Path) -> None:
    """The standard tensorflow wheel next to libtpu: TF sees no TPU and maps no libtpu.so."""
    result = run(
        venv,
        "-c",
        "import os, libtpu, tensorflow as tf; "
        "assert os.path.exists(os.path.join(os.path.dirname(libtpu.__file__), 'libtpu.so')); "
        "print(sorted({d.device_type for d in tf.config.list_physical_devices()}), "
        "any('libtpu' in line for line in open('/proc/self/maps')))",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["['CPU']", "False"]


def test_jax_on_a_tpu_raises_instead_of_falling_back_to_cpu(venv: Path) -> None:
    """Why the trainer sets JAX_PLATFORMS=tpu on TPUs: unset, JAX silently uses the CPU."""
    probe = (
        "import jax\n"
        "try:\n    print([d.platform for d in jax.devices()])\n"
        "except RuntimeError as e:\n    print('RuntimeError', e)\n"
    )
    fallback = run(venv, "-c", probe)
    assert fallback.returncode == 0, fallback.stderr[-3000:]
    assert fallback.stdout.strip() == "['cpu']"
    strict = run(venv, "-c", probe, env={"JAX_PLATFORMS": "tpu"})
    assert strict.returncode == 0, strict.stderr[-3000:]
    assert strict.stdout.startswith("RuntimeError") and "tpu" in strict.stdout.lower()


def test_train_on_a_tpu_slice_without_a_tpu_exits_bad_input_at_once(
    venv: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = run(
        venv,
        "-m",
        "bert_trainer",
        "train",
        "--config",
        str(tmp_path / "config.json"),
        env={
            contract.ENV_DEVICE: "tpu",
            contract.ENV_TERMINATION_MESSAGE_PATH: str(tmp_path / "termination-log"),
        },
    )
    assert result.returncode == contract.EXIT_BAD_INPUT, result.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "no TPU device" in (tmp_path / "termination-log").read_text()
