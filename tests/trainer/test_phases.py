"""Training in phases (spec.training.phases): lengths in turn, one schedule each, resumes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from bert_trainer.config import TrainConfig, TrainerConfig
from tests.trainer.helpers import (
    PREDICTIONS,
    SEQ_LENGTH,
    TINY,
    config_json,
    run_in_fresh_process,
    write_records,
)
from tests.trainer.test_train import (
    ListSink,
    assert_same_checkpoint,
    checkpoint_steps,
    checkpoint_values,
    keep_only_checkpoint,
)

LONG, LONG_PREDICTIONS = 64, 10
"""The second phase's length (the tiny model's maxPositionEmbeddings)."""
JAX = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
STILL = TINY.model_copy(update={"hidden_dropout": 0.0, "attention_dropout": 0.0})


def phased_config(root: Path, **overrides: Any) -> TrainerConfig:
    """Six steps at length 32 (batch 16), then four at 64 (batch 8), in one directory."""
    short, long = root / "records-32", root / "records-64"
    if not short.exists():
        write_records(short, count=256, seed=1)
        write_records(long, count=256, seed=2, seq_length=LONG, predictions=LONG_PREDICTIONS)
    common: dict[str, Any] = {
        "model": TINY,
        "checkpoint_every_steps": 2,
        "keep_checkpoints": 10,
        "checkpoint_dir": str(root / "checkpoints"),
        "summary_dir": str(root / "summaries"),
        "run_steps": 10,
        **overrides,
    }
    first = TrainConfig(
        tfrecords=str(short / "part-*.tfrecord"),
        max_seq_length=SEQ_LENGTH,
        max_predictions_per_seq=PREDICTIONS,
        global_batch_size=16,
        train_steps=6,
        learning_rate=2e-3,
        warmup_steps=2,
        **common,
    )
    second = TrainConfig(
        tfrecords=str(long / "part-*.tfrecord"),
        max_seq_length=LONG,
        max_predictions_per_seq=LONG_PREDICTIONS,
        global_batch_size=8,
        gradient_accumulation_steps=2,
        first_step=6,
        train_steps=10,
        phase=1,
        learning_rate=1e-3,
        warmup_steps=1,
        **common,
    )
    return TrainerConfig(train_phases=[first, second])


def test_the_schedule_warms_up_and_decays_in_each_phase() -> None:
    from bert_trainer.train.optimizer import PhasedSchedule, WarmupLinearDecay

    schedule = PhasedSchedule(
        [
            WarmupLinearDecay(peak=1.0, warmup_steps=2, total_steps=10),
            WarmupLinearDecay(peak=0.5, warmup_steps=2, total_steps=5, first_step=10),
        ]
    )
    steps = (0, 1, 2, 9, 10, 11, 12, 14, 15)
    expected = (0.0, 0.5, 0.8, 0.1, 0.0, 0.25, 0.5 * 3 / 5, 0.5 * 1 / 5, 0.0)
    assert [float(schedule(s)) for s in steps] == pytest.approx(expected)
    again = PhasedSchedule.from_config(schedule.get_config())
    assert [float(again(s)) for s in steps] == pytest.approx(expected)


def test_phases_must_follow_each_other(tmp_path: Path) -> None:
    config = phased_config(tmp_path)
    first, second = config.phases()
    with pytest.raises(ValidationError, match="not where phase 0 ends"):
        TrainerConfig(train_phases=[first, second.model_copy(update={"first_step": 5})])
    with pytest.raises(ValidationError, match="another model or checkpointDir"):
        TrainerConfig(
            train_phases=[first, second.model_copy(update={"checkpoint_dir": str(tmp_path)})]
        )
    with pytest.raises(ValidationError, match="train or trainPhases"):
        TrainerConfig(train=first, train_phases=[first, second])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, ListSink]:
    """The two phases in full, without dropout, in order, evaluating every 3 steps."""
    from bert_trainer.train.run import train

    root = tmp_path_factory.mktemp("phases")
    sink = ListSink()
    config = with_eval(phased_config(root, model=STILL, shuffle=False), root)
    return root, train(config, progress_sink=sink), sink


@pytest.mark.tensorflow
def test_two_phases_train_in_turn_and_a_run_stopped_in_the_second_resumes_there(
    evaluated: tuple[Path, Any, ListSink], tmp_path: Path
) -> None:
    """No dropout, records in order: resumed from step 8, step 10 is the whole run's."""
    from bert_trainer.train.run import train

    whole, result, sink = evaluated
    resumed = tmp_path / "resumed"

    assert (result.first_step, result.final_step) == (0, 10)
    assert checkpoint_steps(whole / "checkpoints") == [2, 4, 6, 8, 10]
    # The optimizer carried on over the phases: one update per step of either.
    assert checkpoint_values(str(whole / "checkpoints" / "ckpt-10")) == {
        "step": 10,
        "iterations": 10,
    }
    assert {report["totalSteps"] for report in sink.sent} == {10}
    assert sink.sent[-1]["step"] == 10

    shutil.copytree(whole / "records-32", resumed / "records-32")
    shutil.copytree(whole / "records-64", resumed / "records-64")
    keep_only_checkpoint(whole / "checkpoints", resumed / "checkpoints", 8)
    # Without evaluation: evaluating reads the weights, never changes them.
    again = train(phased_config(resumed, model=STILL, shuffle=False), progress_sink=ListSink())
    assert (again.first_step, again.final_step) == (8, 10)
    assert_same_checkpoint(whole / "checkpoints" / "ckpt-10", resumed / "checkpoints" / "ckpt-10")


@pytest.mark.tensorflow
def test_the_jax_runtime_trains_the_phases_and_resumes_in_the_second(tmp_path: Path) -> None:
    """The slice's runtime (JAX, one host here): the whole run, then a resume from step 8."""
    import json

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    path = tmp_path / "whole.json"
    path.write_text(
        config_json(with_eval(phased_config(whole, model=STILL, shuffle=False), whole, 5))
    )
    out = run_in_fresh_process("tests.trainer.phases_jax", str(path), env=JAX)
    ran = json.loads(out.splitlines()[-1])
    assert (ran["first"], ran["final"], ran["eval"]["step"]) == (0, 10, 10)
    assert 0 <= ran["eval"]["masked_lm_accuracy"] <= 1 and ran["eval"]["masked_lm_loss"] > 0
    assert [p.name for p in sorted((whole / "checkpoints").glob("ckpt-*.npz"))] == [
        f"ckpt-{s}.npz" for s in (10, 2, 4, 6, 8)
    ]

    shutil.copytree(whole / "records-32", resumed / "records-32")
    shutil.copytree(whole / "records-64", resumed / "records-64")
    (resumed / "checkpoints").mkdir()
    shutil.copy(whole / "checkpoints" / "ckpt-8.npz", resumed / "checkpoints" / "ckpt-8.npz")
    path = tmp_path / "resumed.json"
    path.write_text(config_json(phased_config(resumed, model=STILL, shuffle=False)))
    out = run_in_fresh_process("tests.trainer.phases_jax", str(path), env=JAX)
    assert json.loads(out.splitlines()[-1])["first"] == 8
    want = np.load(whole / "checkpoints" / "ckpt-10.npz")
    got = np.load(resumed / "checkpoints" / "ckpt-10.npz")
    assert set(want.files) == set(got.files)
    for name in want.files:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


# --- Held-out evaluation -------------------------------------------------------------------


def with_eval(config: TrainerConfig, root: Path, every: int | None = 3) -> TrainerConfig:
    """``config``'s phases evaluating on held-out records of their lengths, 2 batches each."""
    held = {SEQ_LENGTH: root / "eval-32", LONG: root / "eval-64"}
    if not held[SEQ_LENGTH].exists():
        write_records(held[SEQ_LENGTH], count=64, shards=1, seed=11)
        write_records(
            held[LONG], count=64, shards=1, seed=12, seq_length=LONG, predictions=LONG_PREDICTIONS
        )
    phases = [
        phase.model_copy(
            update={
                "eval_tfrecords": str(held[phase.max_seq_length] / "part-*.tfrecord"),
                "eval_every_steps": every,
                "eval_batches": 2,
            }
        )
        for phase in config.phases()
    ]
    return TrainerConfig(train_phases=phases)


@pytest.mark.tensorflow
def test_training_evaluates_on_held_out_records_with_googles_metric_names(
    evaluated: tuple[Path, Any, ListSink],
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    root, result, sink = evaluated
    assert result.eval is not None and result.eval.step == 10
    names = ("masked_lm_accuracy", "masked_lm_loss", "next_sentence_accuracy", "next_sentence_loss")
    assert set(result.eval.by_name()) == set(names)
    events = EventAccumulator(str(root / "summaries"), size_guidance={"tensors": 0})
    events.Reload()
    for name in names:
        tag = f"eval/{name}"
        assert events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars", tag
        steps = [e.step for e in events.Tensors(tag)]
        # Every 3 steps, and at each phase's last step (6 ends phase 1, 10 the run).
        assert steps == [3, 6, 9, 10], (tag, steps)
    final = {
        name: float(tensor_util.make_ndarray(events.Tensors(f"eval/{name}")[-1].tensor_proto))
        for name in names
    }
    assert final == pytest.approx(result.eval.by_name(), rel=1e-5)
    # status.progress.eval: the latest evaluation, the step it ran at, camelCase names.
    reported = [r["eval"] for r in sink.sent if r["eval"] is not None]
    assert reported and reported[-1]["step"] == 10
    assert reported[-1]["maskedLmAccuracy"] == pytest.approx(final["masked_lm_accuracy"], abs=1e-5)
    assert 0 <= reported[-1]["nextSentenceAccuracy"] <= 1
    assert reported[-1]["maskedLmLoss"] > 0


@pytest.mark.tensorflow
def test_an_evaluation_reads_the_same_batches_each_time(
    evaluated: tuple[Path, Any, ListSink], tmp_path: Path
) -> None:
    """The finished run evaluated again, from its last checkpoint: the same figures."""
    from bert_trainer.train.run import train

    source, result, _ = evaluated
    root = tmp_path / "again"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("summaries"))
    again = train(with_eval(phased_config(root, model=STILL, shuffle=False), root),
                  progress_sink=ListSink())  # fmt: skip
    assert (again.first_step, again.final_step) == (10, 10)
    assert result.eval is not None and again.eval is not None
    assert again.eval.by_name() == pytest.approx(result.eval.by_name(), rel=1e-5)


def test_held_out_records_that_do_not_exist_are_bad_input(tmp_path: Path) -> None:
    from bert_trainer.storage import InputError
    from bert_trainer.train.run import train

    config = with_eval(phased_config(tmp_path), tmp_path)
    missing = [p.model_copy(update={"eval_tfrecords": str(tmp_path / "none/*.tfrecord")})
               for p in config.phases()]  # fmt: skip
    with pytest.raises(InputError, match="none"):
        train(TrainerConfig(train_phases=missing), progress_sink=ListSink())
