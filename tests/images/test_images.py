"""The images as a cluster runs them: uid 10001, read-only root, no capabilities.

Both images are built from the working tree with buildah (``bpj_devstack.images``;
cached, so seconds after ``./dev setup``) and run with podman under the pod
security settings the chart and the operator render. Each entry point runs, the
trainer prepares a corpus for real, and the contents hold the product only.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.api import BertPretrainJob
from bert_pretrain_operator.render import workloads
from bert_pretrain_operator.settings import Settings
from bert_trainer import contract
from bert_trainer.config import PrepareConfig, TrainerConfig
from bpj_devstack import images
from tests.images.conftest import run_as_pod
from tests.trainer.conftest import synthetic_corpus

pytestmark = pytest.mark.images

REPO_ROOT = Path(__file__).resolve().parents[2]
UID = int(images.IMAGE_USER.split(":")[0])

#: Run inside an image: who it runs as, what is installed, what is on PATH.
CONTENTS = r"""
import importlib.metadata as md, importlib.util, json, os, sys
names = ("bpj_devstack", "pytest", "bert_pretrain_operator", "bert_trainer", "kubernetes",
         "tensorflow", "jax", "libtpu", "google")
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "distributions": sorted({d.metadata["Name"].lower() for d in md.distributions()}),
    "modules": {name: importlib.util.find_spec(name) is not None for name in names},
    "scripts": sorted(os.listdir(os.path.join(sys.prefix, "bin"))),
    "writable_root": os.access("/", os.W_OK),
}))
"""


def dev_only_distributions() -> set[str]:
    """What only development needs: the dev extra and the development stack itself."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = {"bpj-devstack"}
    for requirement in project["optional-dependencies"]["dev"]:
        names.add(re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower())
    return names


def contents(image: str) -> dict[str, Any]:
    result = run_as_pod(image, "-c", CONTENTS, entrypoint="python")
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def assert_product_only(found: dict[str, Any]) -> None:
    assert (found["uid"], found["gid"]) == (UID, UID)
    assert not found["writable_root"]
    assert found["modules"]["bert_pretrain_operator"] and found["modules"]["bert_trainer"]
    assert not found["modules"]["bpj_devstack"] and not found["modules"]["pytest"]
    assert not dev_only_distributions() & set(found["distributions"])
    assert "bpj-devstack" not in found["scripts"]
    assert {"bpj", "bert-trainer"} <= set(found["scripts"])


@pytest.mark.parametrize("name", ["operator", "trainer"])
def test_images_declare_and_run_as_uid_10001(
    name: str, built: dict[str, images.BuiltImage]
) -> None:
    image = built[name].ref
    declared = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Config.User}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert declared == images.IMAGE_USER
    result = run_as_pod(image, "-u", entrypoint="id")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(UID)


def test_the_chart_and_the_operator_run_pods_as_the_images_user() -> None:
    values = yaml.safe_load((REPO_ROOT / "charts/bert-pretrain-operator/values.yaml").read_text())
    pod = values["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (UID, UID)
    for dockerfile in ("operator/Dockerfile", "trainer_image/Dockerfile"):
        users = re.findall(r"^USER (\S+)$", (REPO_ROOT / dockerfile).read_text(), re.MULTILINE)
        assert users == [images.IMAGE_USER], dockerfile
    manifest = yaml.safe_load((REPO_ROOT / "examples" / "quickstart.yaml").read_text())
    manifest["metadata"].update(namespace="team-a", uid="uid-1")
    job = BertPretrainJob.from_manifest(manifest)
    for rendered in (
        workloads.prepare_job(job, Settings(), "records"),
        workloads.train_job(job, Settings(), 1),
    ):
        assert rendered["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID


def test_operator_image_holds_the_operator_only(built: dict[str, images.BuiltImage]) -> None:
    found = contents(built["operator"].ref)
    assert_product_only(found)
    # The product's base dependencies only: no ML stack, no GCS client; the kubernetes
    # client's loaders and pool are kube.py's.
    for module in ("tensorflow", "jax", "libtpu", "google"):
        assert not found["modules"][module], module
    assert found["modules"]["kubernetes"]


def test_operator_image_entry_points(built: dict[str, images.BuiltImage]) -> None:
    image = built["operator"].ref
    # What the chart runs, imported (running it would connect to a cluster).
    imported = run_as_pod(
        image,
        "-c",
        "import bert_pretrain_operator.__main__ as m, kopf; print(callable(m.main), kopf.__name__)",
        entrypoint="python",
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.split() == ["True", "kopf"]
    helped = run_as_pod(image, "--help", entrypoint="bpj")
    assert helped.returncode == 0, helped.stderr
    assert "validate" in helped.stdout
    validated = run_as_pod(
        image,
        "validate",
        "/examples/quickstart.yaml",
        entrypoint="bpj",
        mounts=[(REPO_ROOT / "examples", "/examples", "ro")],
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_trainer_image_holds_the_trainer_only(built: dict[str, images.BuiltImage]) -> None:
    found = contents(built["trainer"].ref)
    assert_product_only(found)
    assert found["modules"]["tensorflow"] and found["modules"]["jax"]
    assert not found["modules"]["libtpu"], "the CPU variant has no TPU runtime"


def test_trainer_image_help(built: dict[str, images.BuiltImage]) -> None:
    result = run_as_pod(built["trainer"].ref, "--help")
    assert result.returncode == 0, result.stderr
    assert "prepare" in result.stdout and "export" in result.stdout


def test_trainer_image_prepares_a_corpus(
    built: dict[str, images.BuiltImage], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text(synthetic_corpus(40))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by uid 10001
    config = TrainerConfig(
        prepare=PrepareConfig(
            corpus=["/data/corpus.txt"],
            vocab_size=200,
            max_seq_length=32,
            max_predictions_per_seq=5,
            dupe_factor=2,
            num_shards=2,
            workers=1,
            output_vocab="/out/vocab.txt",
            output_tfrecords="/out/records",
        )
    )
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(config.model_dump_json(by_alias=True))
    result = run_as_pod(
        built["trainer"].ref,
        "prepare",
        "--config",
        contract.CONFIG_PATH,
        env={contract.ENV_TERMINATION_MESSAGE_PATH: "/tmp/termination-log"},
        mounts=[
            (data, "/data", "ro"),
            (tmp_path / "config", contract.CONFIG_DIR, "ro"),
            (out, "/out", "rw"),
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 50 < len(vocab) <= 200
    shards = sorted(path.name for path in (out / "records").iterdir())
    assert shards == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    assert all((out / "records" / name).stat().st_size > 0 for name in shards)
    # The kernels came from the image's cache, built for any x86-64 CPU: the pod,
    # with its read-only root, compiled none (13 s on this machine if it had to).
    loaded = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and "loaded compiled kernels" in line
    ]
    assert loaded and all(entry["compiled"] == 0 for entry in loaded), result.stderr[-3000:]


def test_trainer_image_refuses_a_tpu_slice_without_a_tpu(
    built: dict[str, images.BuiltImage],
) -> None:
    result = run_as_pod(
        built["trainer"].ref,
        "train",
        env={
            contract.ENV_DEVICE: "tpu",
            contract.ENV_TERMINATION_MESSAGE_PATH: "/tmp/termination-log",
        },
        timeout=60,
    )
    assert result.returncode == contract.EXIT_BAD_INPUT, result.stderr
    assert "no TPU device" in result.stderr


def test_oci_archive_is_written_once_per_image_id(
    built: dict[str, images.BuiltImage], tmp_path: Path
) -> None:
    image = built["operator"]
    path = images.export_oci_archive(image.ref, tmp_path / "operator.tar")
    first = path.stat().st_mtime_ns
    assert images.export_oci_archive(image.ref, tmp_path / "operator.tar") == path
    assert path.stat().st_mtime_ns == first, "an archive of the same image ID is kept"
    index = subprocess.run(
        ["tar", "-xOf", str(path), "index.json"], capture_output=True, check=True
    ).stdout
    (manifest,) = json.loads(index)["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"].endswith(
        image.ref.rsplit(":", 1)[1]
    )
