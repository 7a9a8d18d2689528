"""A TPU slice's ``train`` without a TPU fails at once as bad input; a busy TPU is retried.

There is no TPU here: the device probe is injected, and the stages behind the
entry point are stubbed, so these tests import no TensorFlow or JAX.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from bert_trainer import __main__ as entry
from bert_trainer import contract
from bert_trainer.config import (
    BertModelConfig,
    ExportConfig,
    PrepareConfig,
    TrainConfig,
    TrainerConfig,
)
from bert_trainer.storage import InputError
from bert_trainer.train.cluster import SliceHosts, choose_runtime
from bert_trainer.train.device import DeviceProbe, tpu_device_files, train_device

MODEL = BertModelConfig(
    vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
)
NO_TPU = DeviceProbe(device_files=lambda: [], tpu_runtime=lambda: True)
V4_HOST = DeviceProbe(
    device_files=lambda: ["/dev/accel0", "/dev/accel1", "/dev/accel2", "/dev/accel3"],
    tpu_runtime=lambda: True,
)
#: What libtpu says when another process holds the chips (xla's tpu_initialize_util.cc).
BUSY = "The TPU is already in use by process with pid 4242. Not attempting to load libtpu.so."


def config_file(tmp_path: Path) -> Path:
    config = TrainerConfig(
        prepare=PrepareConfig(
            corpus=[str(tmp_path / "corpus.txt")],
            output_vocab=str(tmp_path / "vocab.txt"),
            output_tfrecords=str(tmp_path / "records"),
        ),
        train=TrainConfig(
            tfrecords=str(tmp_path / "records" / "*.tfrecord"),
            model=MODEL,
            global_batch_size=8,
            train_steps=2,
            checkpoint_dir=str(tmp_path / "checkpoints"),
        ),
        export=ExportConfig(
            checkpoint_dir=str(tmp_path / "checkpoints"),
            model=MODEL,
            vocab=str(tmp_path / "vocab.txt"),
            output_dir=str(tmp_path / "export"),
        ),
    )
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return path


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[Any]]:
    """The stage modules replaced by recorders; what each saw of the environment."""
    import os

    calls: dict[str, list[Any]] = {"prepare": [], "train": [], "export": [], "multihost": []}

    def stub(name: str, attr: str, module: str, raises: str | None = None) -> None:
        def run(*args: Any, **kwargs: Any) -> None:
            calls[name].append({k: os.environ.get(k) for k in ("KERAS_BACKEND", "JAX_PLATFORMS")})
            if raises:
                raise RuntimeError(raises)

        fake = types.ModuleType(module)
        setattr(fake, attr, run)
        monkeypatch.setitem(sys.modules, module, fake)

    stub("prepare", "run_prepare", "bert_trainer.prepare")
    stub("export", "run_export", "bert_trainer.export.run")
    stub("train", "run_train", "bert_trainer.train.run")
    # The JAX runtime as it behaves on a host whose chips another process holds.
    stub("multihost", "run_multihost", "bert_trainer.train.multihost", raises=BUSY)
    for name in ("KERAS_BACKEND", "JAX_PLATFORMS", contract.ENV_DEVICE, contract.ENV_RUNTIME):
        # setenv first, so that undoing it removes what main() itself sets (it writes
        # os.environ for Keras and JAX): nothing of one test leaks into the next, nor
        # into the trainer processes later tests start.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    for name in (contract.ENV_WORKER_ID, contract.ENV_WORKER_HOSTNAMES, contract.ENV_SUPERVISED):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(tmp_path / "termination-log"))
    return calls


def test_train_on_a_tpu_slice_without_a_tpu_is_bad_input_at_once(
    stages: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(contract.ENV_DEVICE, "tpu")
    started = time.monotonic()
    # The device is checked before the configuration is read: this one does not exist.
    code = entry.main(["train", "--config", str(tmp_path / "absent.json")], probe=NO_TPU)
    assert code == contract.EXIT_BAD_INPUT
    assert time.monotonic() - started < 5
    message = (tmp_path / "termination-log").read_text()
    assert "no TPU device" in message and "google.com/tpu" in message
    assert stages["train"] == stages["multihost"] == []


def test_a_tpu_that_is_there_but_busy_is_an_infrastructure_failure(
    stages: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(contract.ENV_DEVICE, "tpu")
    code = entry.main(["train", "--config", str(config_file(tmp_path))], probe=V4_HOST)
    assert code == contract.EXIT_INFRASTRUCTURE
    assert "already in use" in (tmp_path / "termination-log").read_text()
    # One host on a TPU trains on JAX, which must raise rather than fall back to CPU.
    assert stages["multihost"] == [{"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "tpu"}]
    assert stages["train"] == []


def test_a_tpu_image_without_libtpu_is_bad_input(
    stages: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(contract.ENV_DEVICE, "tpu")
    cpu_image = DeviceProbe(device_files=V4_HOST.device_files, tpu_runtime=lambda: False)
    code = entry.main(["train", "--config", str(config_file(tmp_path))], probe=cpu_image)
    assert code == contract.EXIT_BAD_INPUT
    assert "VARIANT=tpu" in (tmp_path / "termination-log").read_text()


@pytest.mark.parametrize("command", ["prepare", "export"])
def test_cpu_stages_never_ask_for_a_tpu(
    command: str, stages: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Even with the variable set (a chart's trainer env applies to every stage).
    monkeypatch.setenv(contract.ENV_DEVICE, "tpu")
    code = entry.main([command, "--config", str(config_file(tmp_path))], probe=NO_TPU)
    assert code == contract.EXIT_OK
    assert len(stages[command]) == 1


def test_a_development_stack_trains_on_cpu_with_tensorflow(
    stages: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(contract.ENV_DEVICE, "cpu")
    code = entry.main(["train", "--config", str(config_file(tmp_path))], probe=V4_HOST)
    assert code == contract.EXIT_OK
    assert len(stages["train"]) == 1 and stages["multihost"] == []


def test_device_decision() -> None:
    env_tpu = {contract.ENV_DEVICE: "tpu"}
    assert train_device(env_tpu, V4_HOST) == "tpu"
    assert train_device({contract.ENV_DEVICE: "cpu"}, V4_HOST) == "cpu"
    # Unset (tests, a developer's run): a TPU when chips and libtpu are both there.
    assert train_device({}, V4_HOST) == "tpu"
    assert train_device({}, NO_TPU) == "cpu"
    no_libtpu = DeviceProbe(device_files=V4_HOST.device_files, tpu_runtime=lambda: False)
    assert train_device({}, no_libtpu) == "cpu"
    with pytest.raises(InputError, match="no TPU device"):
        train_device(env_tpu, NO_TPU)
    with pytest.raises(InputError, match="expected 'tpu' or 'cpu'"):
        train_device({contract.ENV_DEVICE: "gpu"}, V4_HOST)


def test_every_tpu_trains_on_jax() -> None:
    one = SliceHosts.from_environ({})
    assert choose_runtime(one, {}, device="tpu") == "jax"
    assert choose_runtime(one, {}, device="cpu") == "tensorflow"
    with pytest.raises(InputError, match="standard wheel"):
        choose_runtime(one, {contract.ENV_RUNTIME: "tensorflow"}, device="tpu")


def test_device_files_are_accel_nodes_or_vfio_groups() -> None:
    files = {"/dev/accel*": ["/dev/accel1", "/dev/accel0"], "/dev/vfio/[0-9]*": ["/dev/vfio/0"]}
    assert tpu_device_files(lambda pattern: files[pattern]) == [
        "/dev/accel0",
        "/dev/accel1",
        "/dev/vfio/0",
    ]
    assert tpu_device_files(lambda pattern: []) == []
