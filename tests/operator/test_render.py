"""The children the operator renders for the examples: shapes GKE expects, and the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator import tpu_catalogue
from bert_pretrain_operator.api import (
    BertPretrainJob,
    BertPretrainJobStatus,
    CpuResources,
    ExportSpec,
    PreparationSpec,
    PreparationStatus,
)
from bert_pretrain_operator.render import names, render_stage, workloads
from bert_pretrain_operator.render.trainer_config import ResolvedInputs, trainer_config
from bert_pretrain_operator.settings import Settings
from bert_trainer import contract
from bert_trainer.config import TrainerConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = Settings(trainer_image="registry.example/trainer:1")


def load(example: str) -> BertPretrainJob:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    manifest["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    return BertPretrainJob.from_manifest(manifest)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return dict(c)


def test_multi_host_slice_gets_one_pod_per_vm_and_a_headless_service() -> None:
    job = load("bert-base-from-scratch.yaml")  # v5p 2x2x2: 8 chips on 2 VMs
    service, train = render_stage(job, SETTINGS, "train", 1)
    shape = tpu_catalogue.slice_shape("tpu-v5p-slice", "2x2x2")
    assert shape is not None and shape.vms == 2
    spec = train["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["nodeSelector"] == {
        tpu_catalogue.LABEL_ACCELERATOR: "tpu-v5p-slice",
        tpu_catalogue.LABEL_TOPOLOGY: "2x2x2",
    }
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    c = container(train)
    # A v5p VM (ct5p-hightpu-4t): 208 vCPUs, 448 GB; 80 % and 75 % of them.
    assert c["resources"]["requests"] == {"google.com/tpu": "4", "cpu": "166", "memory": "336G"}
    assert c["resources"]["limits"] == {"google.com/tpu": "4", "memory": "336G"}
    assert {p["containerPort"] for p in c["ports"]} == {8471, contract.DEFAULT_COORDINATOR_PORT}
    assert c["args"] == ["train", "--config", contract.CONFIG_PATH]
    assert c["image"] == "registry.example/trainer:1"
    env = {e["name"]: e for e in c["env"]}
    assert env["TPU_WORKER_HOSTNAMES"]["value"] == (
        "bert-base-scratch-train-1-0.bert-base-scratch-workers,"
        "bert-base-scratch-train-1-1.bert-base-scratch-workers"
    )
    assert env["TPU_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert env["JAX_COORDINATOR_PORT"]["value"] == str(contract.DEFAULT_COORDINATOR_PORT)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["jax-coordinator"] == (
        contract.DEFAULT_COORDINATOR_PORT
    )


@pytest.mark.parametrize(
    ("accelerator", "topology", "cpu", "memory"),
    [
        ("tpu-v4-podslice", "2x2x1", "192", "305G"),  # ct4p-hightpu-4t: 240, 407 GB
        ("tpu-v5-lite-podslice", "1x1", "19", "36G"),  # ct5lp-hightpu-1t: 24, 48 GB
        ("tpu-v5-lite-podslice", "4x4", "89", "144G"),  # ct5lp-hightpu-4t: 112, 192 GB
        ("tpu-v6e-slice", "2x2", "144", "540G"),  # ct6e-standard-4t: 180, 720 GB
    ],
)
def test_training_pods_request_cpu_and_memory_of_their_machine_type(
    accelerator: str, topology: str, cpu: str, memory: str
) -> None:
    manifest = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    manifest["metadata"].update(namespace="team-a", uid="uid-1", generation=1)
    manifest["spec"]["tpu"] = {"accelerator": accelerator, "topology": topology}
    manifest["spec"]["training"]["globalBatchSize"] = 16  # divisible by every slice here
    job = BertPretrainJob.from_manifest(manifest)
    *_, train = render_stage(job, SETTINGS, "train", 1)
    resources = container(train)["resources"]
    assert (resources["requests"]["cpu"], resources["requests"]["memory"]) == (cpu, memory)
    assert resources["limits"]["memory"] == memory and "cpu" not in resources["limits"]


def test_training_pod_resources_come_from_the_spec_when_given() -> None:
    job = load("quickstart.yaml")  # tpu.resources: cpu 1, memory 4Gi
    assert job.spec.tpu.resources is not None
    *_, train = render_stage(job, SETTINGS, "train", 1)
    resources = container(train)["resources"]
    assert resources["requests"] == {"google.com/tpu": "4", "cpu": "1", "memory": "4Gi"}
    assert resources["limits"] == {"google.com/tpu": "4", "memory": "4Gi"}


def test_every_stage_bounds_its_tmp() -> None:
    job = load("quickstart.yaml")
    small = Settings(trainer_image="t:1", tmp_size_limit="5Gi")
    for stage in ("prepare", "train", "export"):
        for settings, limit in ((SETTINGS, "20Gi"), (small, "5Gi")):
            *_, manifest = render_stage(job, settings, stage, 1)
            volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
            assert volumes["tmp"]["emptyDir"] == {"sizeLimit": limit}, stage


def test_single_host_slice_needs_no_service() -> None:
    (train,) = render_stage(load("quickstart.yaml"), SETTINGS, "train", 3)
    assert train["metadata"]["name"] == "quickstart-train-3"
    assert train["spec"]["completions"] == 1
    assert "subdomain" not in train["spec"]["template"]["spec"]
    env_names = {e["name"] for e in container(train)["env"]}
    assert not env_names & {"TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"}, "one host trains alone"
    assert train["metadata"]["labels"][names.LABEL_ATTEMPT] == "3"


def test_training_pods_say_they_run_on_a_tpu_and_cpu_stages_do_not() -> None:
    job = load("quickstart.yaml")
    (train,) = render_stage(job, SETTINGS, "train", 1)
    env = {e["name"]: e.get("value") for e in container(train)["env"]}
    assert env[contract.ENV_DEVICE] == "tpu"
    for stage in ("prepare", "export"):
        (cpu_job,) = render_stage(job, SETTINGS, stage, 1)
        assert contract.ENV_DEVICE not in {e["name"] for e in container(cpu_job)["env"]}
    # A development stack's TPU-shaped nodes have no chips: its setting wins, once.
    local = Settings(trainer_image="t:1", extra_trainer_env={contract.ENV_DEVICE: "cpu"})
    (train,) = render_stage(job, local, "train", 1)
    device = [e for e in container(train)["env"] if e["name"] == contract.ENV_DEVICE]
    assert device == [{"name": contract.ENV_DEVICE, "value": "cpu"}]


def test_trainer_pull_policy_is_the_settings_or_kubernetes_default() -> None:
    job = load("quickstart.yaml")
    for stage in ("prepare", "train", "export"):
        (default,) = render_stage(job, SETTINGS, stage, 1)
        assert "imagePullPolicy" not in container(default)
        never = Settings.from_env({"BPJ_TRAINER_IMAGE_PULL_POLICY": "Never"})
        (preloaded,) = render_stage(job, never, stage, 1)
        assert container(preloaded)["imagePullPolicy"] == "Never"
    with pytest.raises(ValueError, match="BPJ_TRAINER_IMAGE_PULL_POLICY='never' is not one of"):
        Settings.from_env({"BPJ_TRAINER_IMAGE_PULL_POLICY": "never"})


def test_trainer_env_secret_reaches_every_stage_by_reference() -> None:
    job = load("quickstart.yaml")
    settings = Settings.from_env({"BPJ_TRAINER_ENV_SECRET": "proxy-credentials"})
    for stage in ("prepare", "train", "export"):
        (manifest,) = render_stage(job, settings, stage, 1)
        assert container(manifest)["envFrom"] == [{"secretRef": {"name": "proxy-credentials"}}]
        (plain,) = render_stage(job, SETTINGS, stage, 1)
        assert "envFrom" not in container(plain)


def test_spot_and_kueue() -> None:
    job = load("v6e-spot-kueue.yaml")
    (*_, train) = render_stage(job, SETTINGS, "train", 1)
    assert train["spec"]["template"]["spec"]["nodeSelector"][tpu_catalogue.LABEL_SPOT] == "true"
    assert train["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == job.spec.queue_name
    assert train["spec"]["suspend"] is True


def test_children_are_owned_by_the_job() -> None:
    job = load("quickstart.yaml")
    for stage in ("prepare", "train", "export"):
        for manifest in render_stage(job, SETTINGS, stage, 1):
            (owner,) = manifest["metadata"]["ownerReferences"]
            assert owner["uid"] == "uid-1"
            assert owner["controller"] is True
            assert manifest["metadata"]["labels"][names.LABEL_JOB] == "quickstart"


def test_cpu_stages_fail_fast_on_bad_input_and_ignore_disruptions() -> None:
    job = load("quickstart.yaml")
    for stage in (
        workloads.prepare_job(job, SETTINGS, "count"),
        workloads.export_job(job, SETTINGS),
    ):
        rules = stage["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "FailJob"
        assert rules[0]["onExitCodes"]["values"] == [contract.EXIT_BAD_INPUT]
        assert rules[1]["action"] == "Ignore"
        assert "nodeSelector" not in stage["spec"]["template"]["spec"]


def with_workers(job: BertPretrainJob, workers: int) -> BertPretrainJob:
    status = BertPretrainJobStatus(preparation=PreparationStatus(workers=workers))
    return job.model_copy(update={"status": status})


@pytest.mark.parametrize(
    ("prepare_pass", "workers", "pods"),
    [("plan", 5, 1), ("count", 5, 5), ("vocab", 5, 1), ("records", 5, 5), ("shards", 12, 8)],
)
def test_each_pass_is_an_indexed_job_whose_indexes_retry_alone(
    prepare_pass: str, workers: int, pods: int
) -> None:
    job = with_workers(load("quickstart.yaml"), workers)
    manifest = workloads.prepare_job(job, SETTINGS, prepare_pass)
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == f"quickstart-prep-{prepare_pass}"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == pods
    assert spec["backoffLimitPerIndex"] == workloads.CPU_STAGE_BACKOFF_LIMIT
    assert spec["maxFailedIndexes"] == 0 and "backoffLimit" not in spec
    assert container(manifest)["args"][-4:] == ["--pass", prepare_pass, "--workers", str(workers)]
    labels = spec["template"]["metadata"]["labels"]
    assert labels[names.LABEL_PASS] == prepare_pass


def test_preparation_and_export_resources_come_from_the_spec_or_the_settings() -> None:
    job = load("quickstart.yaml")
    default = container(workloads.prepare_job(job, SETTINGS, "records"))["resources"]
    assert default == {
        "requests": {"cpu": SETTINGS.prepare_cpu, "memory": SETTINGS.prepare_memory},
        "limits": {"memory": SETTINGS.prepare_memory},
    }
    spec = job.spec.model_copy(
        update={
            "data": job.spec.data.model_copy(
                update={
                    "preparation": PreparationSpec(resources=CpuResources(cpu="6", memory="20Gi"))
                }
            ),
            "export": ExportSpec(resources=CpuResources(memory="12Gi")),
        }
    )
    job = job.model_copy(update={"spec": spec})
    prepare = container(workloads.prepare_job(job, SETTINGS, "records"))["resources"]
    assert prepare == {"requests": {"cpu": "6", "memory": "20Gi"}, "limits": {"memory": "20Gi"}}
    export = container(workloads.export_job(job, SETTINGS))["resources"]
    assert export["requests"] == {"cpu": SETTINGS.prepare_cpu, "memory": "12Gi"}


def test_cpu_stage_pods_size_their_process_pool_by_their_cpu_request() -> None:
    # On a 64-core node a pod that asked for 2 CPUs must not fork 64 processes.
    job = load("quickstart.yaml")
    for manifest in (
        workloads.prepare_job(job, SETTINGS, "records"),
        workloads.export_job(job, SETTINGS),
    ):
        env = {e["name"]: e for e in container(manifest)["env"]}
        assert env[contract.ENV_CPUS]["valueFrom"] == {
            "resourceFieldRef": {
                "containerName": workloads.CONTAINER_NAME,
                "resource": "requests.cpu",
                "divisor": "1",
            }
        }
    (train,) = render_stage(job, SETTINGS, "train", 1)
    assert contract.ENV_CPUS not in {e["name"] for e in container(train)["env"]}


def test_pods_run_locked_down() -> None:
    (train,) = render_stage(load("quickstart.yaml"), SETTINGS, "train", 1)
    pod = train["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(train)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_config_map_round_trips_through_the_trainer_model() -> None:
    job = load("quickstart.yaml")
    config = trainer_config(job, ResolvedInputs(), report_interval=5)
    cm = workloads.config_map(job, config)
    parsed = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
    assert parsed == config
    assert parsed.prepare is not None and parsed.train is not None
    assert parsed.prepare.output_tfrecords == "gs://bpj-quickstart/runs/quickstart/tfrecords"
    assert parsed.prepare.work_dir == "gs://bpj-quickstart/runs/quickstart/prepare"
    assert parsed.train.tfrecords == "gs://bpj-quickstart/runs/quickstart/tfrecords/*.tfrecord"
    assert parsed.train.model.hidden_size == 128
    assert parsed.train.model.vocab_size == job.spec.data.vocab_size
    assert parsed.job is not None and parsed.job.min_report_interval_seconds == 5


def test_gradient_accumulation_reaches_the_trainer() -> None:
    job = load("quickstart.yaml")
    assert (
        trainer_config(job, ResolvedInputs(), report_interval=5).train.gradient_accumulation_steps
        == 1
    )  # type: ignore[union-attr]
    spec = job.spec.model_copy(
        update={"training": job.spec.training.model_copy(update={"gradient_accumulation_steps": 2})}
    )
    config = trainer_config(
        job.model_copy(update={"spec": spec}), ResolvedInputs(), report_interval=5
    )
    assert config.train is not None and config.train.gradient_accumulation_steps == 2


def test_a_job_continued_from_another_jobs_output_reads_its_checkpoints() -> None:
    job = load("bert-base-phase2-from-phase1.yaml")
    source = "gs://bpj-examples/runs/bert-base-scratch/checkpoints"
    with pytest.raises(ValueError, match="init checkpoint"):
        trainer_config(job, ResolvedInputs(), report_interval=5)
    check = trainer_config(job, None, report_interval=5).check
    assert check is not None and check.init_from_output == job.spec.model.init_from_output
    from bert_pretrain_operator.api import Dimensions

    resolved = ResolvedInputs(vocab_size=30522, dimensions=Dimensions(768, 12, 12, 3072))
    config = trainer_config(job, resolved, report_interval=5)
    assert config.train is not None and config.prepare is not None
    assert config.train.init_checkpoints == source
    assert config.train.init_checkpoint is None
    # The source's vocab tokenizes the corpus (none is trained) and sizes the model.
    assert config.prepare.vocab == config.train.vocab == source + "/vocab.txt"
    assert config.train.model.vocab_size == 30522
    assert config.train.checkpoint_dir == "gs://bpj-examples/runs/bert-base-phase2/checkpoints"


def test_init_checkpoint_dimensions_come_from_its_config() -> None:
    job = load("continued-pretraining-multilingual.yaml")
    with pytest.raises(ValueError, match="init checkpoint"):
        trainer_config(job, ResolvedInputs(), report_interval=5)
    from bert_pretrain_operator.api import Dimensions

    resolved = ResolvedInputs(vocab_size=119547, dimensions=Dimensions(768, 12, 12, 3072))
    config = trainer_config(job, resolved, report_interval=5)
    assert config.train is not None
    assert config.train.model.vocab_size == 119547
    assert config.train.init_checkpoint == job.spec.model.init_checkpoint
    assert config.train.init_checkpoint_config is not None
    assert config.train.init_checkpoint_config.endswith("/bert_config.json")


def test_phases_render_one_preparation_of_every_length_and_a_run_of_phases() -> None:
    job = load("bert-base-two-phases.yaml")
    config = trainer_config(job, ResolvedInputs(), report_interval=5)
    out = "gs://bpj-examples/runs/bert-base-two-phases"
    assert config.train is None and config.train_phases is not None
    first, second = config.train_phases
    prepare = config.prepare
    assert prepare is not None
    assert (prepare.max_seq_length, prepare.max_predictions_per_seq) == (128, 20)
    assert prepare.output_tfrecords == f"{out}/tfrecords/seq-128"
    [extra] = prepare.extra_lengths
    assert (extra.max_seq_length, extra.max_predictions_per_seq) == (512, 80)
    assert extra.output_tfrecords == f"{out}/tfrecords/seq-512"
    assert first.tfrecords == f"{out}/tfrecords/seq-128/*.tfrecord"
    assert second.tfrecords == f"{out}/tfrecords/seq-512/*.tfrecord"
    # Steps count over the run; each phase has its own batch, micro-batches and schedule.
    assert (first.first_step, first.train_steps, second.first_step, second.train_steps) == (
        0, 7038, 7038, 8601,
    )  # fmt: skip
    assert first.run_steps == second.run_steps == 8601
    assert (first.global_batch_size, first.gradient_accumulation_steps) == (65536, 64)
    assert (second.global_batch_size, second.gradient_accumulation_steps) == (32768, 128)
    assert (first.learning_rate, first.warmup_steps) == (0.006, 2000)
    assert (second.learning_rate, second.warmup_steps, second.phase) == (0.004, 200, 1)
    assert first.checkpoint_dir == second.checkpoint_dir == f"{out}/checkpoints"
    assert first.model.max_position_embeddings == 512
    parsed = TrainerConfig.model_validate(
        json.loads(workloads.config_map(job, config)["data"]["config.json"])
    )
    assert parsed == config


def test_a_single_phase_job_renders_as_before() -> None:
    config = trainer_config(load("quickstart.yaml"), ResolvedInputs(), report_interval=5)
    assert config.train_phases is None and config.train is not None
    assert config.prepare is not None and config.prepare.extra_lengths == []
    assert (config.train.first_step, config.train.run_steps) == (0, None)


def test_held_out_documents_are_prepared_and_evaluated_at_every_phase_length() -> None:
    job = load("bert-base-two-phases.yaml")
    data = job.spec.data.model_copy(update={"eval_fraction": 0.01})
    training = job.spec.training.model_copy(update={"eval_every_steps": 500})
    spec = job.spec.model_copy(update={"data": data, "training": training})
    config = trainer_config(
        job.model_copy(update={"spec": spec}), ResolvedInputs(), report_interval=5
    )
    out = "gs://bpj-examples/runs/bert-base-two-phases/tfrecords"
    assert config.prepare is not None and config.prepare.eval_fraction == 0.01
    held = [r for r in config.prepare.extra_lengths if r.held_out]
    assert [(r.max_seq_length, r.output_tfrecords) for r in held] == [
        (128, f"{out}/seq-128/eval"),
        (512, f"{out}/seq-512/eval"),
    ]
    assert config.train_phases is not None
    first, second = config.train_phases
    assert first.eval_tfrecords == f"{out}/seq-128/eval/*.tfrecord"
    assert second.eval_tfrecords == f"{out}/seq-512/eval/*.tfrecord"
    assert (first.eval_every_steps, first.eval_batches) == (500, 100)


def test_named_eval_records_are_read_where_they_are() -> None:
    job = load("quickstart.yaml")
    assert trainer_config(job, ResolvedInputs(), report_interval=5).train.eval_tfrecords is None  # type: ignore[union-attr]
    data = job.spec.data.model_copy(update={"eval_tfrecords": "gs://bkt/eval/*.tfrecord"})
    training = job.spec.training.model_copy(update={"eval_batches": 7})
    spec = job.spec.model_copy(update={"data": data, "training": training})
    config = trainer_config(
        job.model_copy(update={"spec": spec}), ResolvedInputs(), report_interval=5
    )
    assert config.train is not None and config.prepare is not None
    assert config.train.eval_tfrecords == "gs://bkt/eval/*.tfrecord"
    # evalEverySteps defaults to checkpointEverySteps; nothing is held out of the corpus.
    assert (config.train.eval_every_steps, config.train.eval_batches) == (10, 7)
    assert config.prepare.eval_fraction == 0 and config.prepare.extra_lengths == []
