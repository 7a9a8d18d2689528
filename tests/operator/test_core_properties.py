"""Property: for any spec admission accepts and any children, the pure core never raises.

Specs are drawn around the examples (every field the API has, values across their
ranges, all TPU shapes of the catalogue); whatever the offline validator (the
twin of admission) rejects is discarded. Observed children are drawn from every
state and failure kind. ``decide`` and ``render_all`` must then return, and what
they return must be consistent: creations only of stages the job has, and a
status that round-trips through the model.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.api import SIZES, BertPretrainJob, BertPretrainJobStatus, ModelSize
from bert_pretrain_operator.api.validation import validate_document
from bert_pretrain_operator.reconcile.decide import decide
from bert_pretrain_operator.reconcile.observe import (
    Failure,
    FailureKind,
    JobState,
    Observed,
    ObservedJob,
    Trouble,
)
from bert_pretrain_operator.render import render_all
from bert_pretrain_operator.render.trainer_config import ResolvedInputs
from bert_pretrain_operator.settings import Settings
from bert_trainer.contract import PREPARE_PASSES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASES = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
SHAPES = [
    (generation.accelerator.value, topology)
    for generation in tpu_catalogue.CATALOGUE.values()
    for topology in generation.topologies
]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@st.composite
def admitted_jobs(draw: st.DrawFn) -> BertPretrainJob:
    doc: dict[str, Any] = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(BASES))))
    spec = doc["spec"]
    accelerator, topology = draw(st.sampled_from(SHAPES))
    chips = tpu_catalogue.topology_chips(topology)
    spec["tpu"] = {"accelerator": accelerator, "topology": topology, "spot": draw(st.booleans())}
    spec["training"]["globalBatchSize"] = chips * draw(st.integers(1, 64))
    spec["training"]["trainSteps"] = draw(st.integers(1, 10**6))
    spec["training"].pop("warmupSteps", None)
    spec["runPolicy"] = {
        "maxRestarts": draw(st.integers(0, 10)),
        "suspend": draw(st.booleans()),
        **({"activeDeadlineSeconds": draw(st.integers(1, 10**6))} if draw(st.booleans()) else {}),
        **({"ttlSecondsAfterFinished": draw(st.integers(0, 10**5))} if draw(st.booleans()) else {}),
    }
    spec["export"] = {"huggingFace": draw(st.booleans())}
    if draw(st.booleans()):
        spec["queueName"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))
    doc["metadata"] = {
        "name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True)),
        "namespace": "team-a",
        "uid": "uid-1",
        "generation": 1,
    }
    assume(not validate_document(doc))
    return BertPretrainJob.from_manifest(doc)


failures = st.builds(
    Failure,
    st.sampled_from(list(FailureKind)),
    st.sampled_from(["Preempted", "BadInput", "OOMKilled", "NodeLost"]),
    st.text(max_size=200),
)
troubles = st.none() | st.builds(
    Trouble, st.sampled_from(["Unschedulable", "ImagePullFailure"]), st.text(max_size=200)
)


@st.composite
def observed_jobs(draw: st.DrawFn, name: str) -> ObservedJob:
    state = draw(st.sampled_from(list(JobState)))
    return ObservedJob(
        name,
        state,
        failure=draw(failures) if state is JobState.FAILED else None,
        trouble=draw(troubles) if state is JobState.PENDING else None,
    )


@st.composite
def observations(draw: st.DrawFn) -> Observed:
    attempts = draw(st.lists(st.integers(1, 12), max_size=4, unique=True))
    passes = draw(st.lists(st.sampled_from(PREPARE_PASSES), max_size=5, unique=True))
    return Observed(
        prepare={p: draw(observed_jobs(f"p-{p}")) for p in passes},
        train={a: draw(observed_jobs(f"t{a}")) for a in attempts},
        export=draw(st.none() | observed_jobs("e")),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    job=admitted_jobs(),
    observed=observations(),
    minutes=st.integers(0, 10**5),
    steps=st.integers(1, 5),
)
def test_the_core_never_raises_and_stays_consistent(
    job: BertPretrainJob, observed: Observed, minutes: int, steps: int
) -> None:
    # The check resolves an init checkpoint's (or output's) dimensions before rendering.
    resolved = ResolvedInputs()
    if job.spec.model.starts_from:
        resolved = ResolvedInputs(vocab_size=119547, dimensions=SIZES[ModelSize.BASE])
    objects = render_all(job, Settings(), resolved)
    assert objects[0]["kind"] == "ConfigMap"
    now = T0
    for _ in range(steps):
        decision = decide(job, observed, now)
        stages = {stage for stage, _ in decision.create}
        if not job.spec.data.corpus:
            assert "prepare" not in stages
        if not job.spec.export.hugging_face:
            assert "export" not in stages
        BertPretrainJobStatus.model_validate(decision.status.model_dump(by_alias=True, mode="json"))
        job = job.model_copy(update={"status": decision.status})
        now += dt.timedelta(minutes=minutes)
