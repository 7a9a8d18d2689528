"""The README's first command: the whole pipeline, from kubectl apply to an exported model."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import DEMO_TEST_TIMEOUT, DemoRun


@pytest.mark.timeout(DEMO_TEST_TIMEOUT)
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.tensorflow
def test_demo_trains_and_exports_the_quickstart_job(demo_run: DemoRun) -> None:
    run_dir = demo_run.run_dir
    out = demo_run.stdout
    assert demo_run.returncode == 0, f"demo failed:\n{out}\n{demo_run.stderr[-4000:]}"
    phases = re.findall(r"phase=(\w+)", out)
    assert phases[-1] == "Succeeded"
    for phase in ("Preparing", "Training", "Exporting"):
        assert phase in phases, f"{phase} never shown: {phases}"
    # Progress written by the trainer itself, through its service account.
    assert re.search(r"trained steps:\s+20 of 20", out)
    loss = float(re.search(r"final loss:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert 0 < loss < 20
    export = run_dir / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["hidden_size"] == 128 and config["num_hidden_layers"] == 2
    assert (export / "model.safetensors").stat().st_size > 100_000
    vocab = (export / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert not (run_dir / "state.json").exists(), "the demo stops its stack"
