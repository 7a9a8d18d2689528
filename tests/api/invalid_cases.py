"""Invalid BertPretrainJob manifests, each a minimal change to a valid one.

Shared by the offline tests (test_validation.py: ``bpj validate``'s rules) and
the cluster tests (test_admission.py: the API server's schema and CEL rules),
so both sides are checked against the same set. Every case names the field its
error message must mention.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Valid manifests the cases start from, one per way of giving data and model.
BASES: dict[str, dict[str, Any]] = {
    # Raw corpus, a trained vocabulary, a named size, a v4 2x2x1 slice.
    "corpus": {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "case"},
        "spec": {
            "data": {"corpus": ["gs://bpj-test/corpus/*.txt"], "vocabSize": 1000},
            "model": {"size": "tiny"},
            "training": {"globalBatchSize": 8, "trainSteps": 100, "warmupSteps": 10},
            "tpu": {"accelerator": "tpu-v4-podslice", "topology": "2x2x1"},
            "output": "gs://bpj-test/runs/case",
        },
    },
    # Prepared records with their vocabulary, explicit dimensions, a v5e 2x4 slice.
    "records": {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "case"},
        "spec": {
            "data": {
                "tfrecords": "gs://bpj-test/records/*.tfrecord",
                "vocab": "gs://bpj-test/records/vocab.txt",
            },
            "model": {"hiddenSize": 256, "numLayers": 4, "numHeads": 4},
            "training": {"globalBatchSize": 64, "trainSteps": 1000},
            "tpu": {"accelerator": "tpu-v5-lite-podslice", "topology": "2x4"},
            "output": "gs://bpj-test/runs/case",
        },
    },
    # Continued pretraining from a Google checkpoint, a v5p 2x2x2 slice.
    "checkpoint": {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "case"},
        "spec": {
            "data": {"corpus": ["gs://bpj-test/corpus/*.txt"], "lowercase": False},
            "model": {
                "initCheckpoint": "gs://bpj-test/ckpt/multi_cased_L-12_H-768_A-12/bert_model.ckpt"
            },
            "training": {"globalBatchSize": 32, "trainSteps": 1000},
            "tpu": {"accelerator": "tpu-v5p-slice", "topology": "2x2x2"},
            "output": "gs://bpj-test/runs/case",
        },
    },
    # The standard recipe in two phases (length 64, then 128) on a v4 2x2x1 slice.
    "phased": {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "case"},
        "spec": {
            "data": {"corpus": ["gs://bpj-test/corpus/*.txt"], "vocabSize": 1000},
            "model": {"size": "tiny"},
            "training": {
                "phases": [
                    {
                        "trainSteps": 90,
                        "maxSeqLength": 64,
                        "maxPredictionsPerSeq": 10,
                        "globalBatchSize": 16,
                    },
                    {
                        "trainSteps": 10,
                        "maxSeqLength": 128,
                        "maxPredictionsPerSeq": 20,
                        "globalBatchSize": 8,
                        "learningRate": 0.00005,
                        "warmupSteps": 2,
                    },
                ]
            },
            "tpu": {"accelerator": "tpu-v4-podslice", "topology": "2x2x1"},
            "output": "gs://bpj-test/runs/case",
        },
    },
    # Continued pretraining from another job's output, on prepared records.
    "continued": {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "case"},
        "spec": {
            "data": {"tfrecords": "gs://bpj-test/records-512/*.tfrecord"},
            "model": {"initFromOutput": "gs://bpj-test/runs/phase1"},
            "training": {"globalBatchSize": 32, "trainSteps": 1000},
            "tpu": {"accelerator": "tpu-v5p-slice", "topology": "2x2x2"},
            "output": "gs://bpj-test/runs/case",
        },
    },
}


def _phase(**changes: Any) -> dict[str, Any]:
    """The phased base's first phase, changed."""
    return {
        "trainSteps": 90,
        "maxSeqLength": 64,
        "maxPredictionsPerSeq": 10,
        "globalBatchSize": 16,
        **changes,
    }


@dataclass(frozen=True)
class Case:
    """One invalid manifest: ``base`` with ``changes`` applied."""

    id: str
    field: str
    """The field the error must name, e.g. ``spec.tpu.topology``."""
    changes: Mapping[str, Any]
    """Dotted path -> new value; ``UNSET`` deletes the key."""
    base: str = "corpus"

    def manifest(self, name: str = "case") -> dict[str, Any]:
        """The invalid manifest, named ``name`` unless the case changes the name."""
        doc = copy.deepcopy(BASES[self.base])
        doc["metadata"]["name"] = name
        for path, value in self.changes.items():
            apply(doc, path, value)
        return doc


@dataclass(frozen=True)
class UpdateCase:
    """A change to a valid job that is allowed before it starts and refused after."""

    id: str
    field: str
    changes: Mapping[str, Any]
    base: str = "corpus"


#: A change that deletes the key instead of setting it.
UNSET: Any = object()


def apply(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with UNSET, delete) the dotted ``path`` in ``doc``, creating parents."""
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    if value is UNSET:
        node.pop(last, None)
    else:
        node[last] = value


_CKPT = "gs://bpj-test/ckpt/multi_cased_L-12_H-768_A-12/bert_model.ckpt"


#: Issue 9's categories of bad input; each case is one more minimal change to a base.
CATEGORIES: dict[str, tuple[Case, ...]] = {
    "wrong-type": (
        Case("spec-string", "spec", {"spec": "train bert"}),
        Case("model-list", "spec.model", {"spec.model": ["tiny"]}),
        Case("tpu-string", "spec.tpu", {"spec.tpu": "v4-8"}),
        Case("corpus-string", "spec.data.corpus", {"spec.data.corpus": "gs://bpj-test/c/*.txt"}),
        Case("corpus-item-int", "spec.data.corpus", {"spec.data.corpus": [42]}),
        Case("output-list", "spec.output", {"spec.output": ["gs://bpj-test/runs/case"]}),
        Case(
            "batch-size-string",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": "8"},
        ),
        Case("train-steps-float", "spec.training.trainSteps", {"spec.training.trainSteps": 100.5}),
        Case(
            "learning-rate-string",
            "spec.training.learningRate",
            {"spec.training.learningRate": "0.0001"},
        ),
        Case("seed-bool", "spec.training.seed", {"spec.training.seed": True}),
        Case("lowercase-string", "spec.data.lowercase", {"spec.data.lowercase": "false"}),
        Case(
            "num-heads-float", "spec.model.numHeads", {"spec.model.numHeads": 4.5}, base="records"
        ),
        Case("suspend-string", "spec.runPolicy.suspend", {"spec.runPolicy.suspend": "yes"}),
        Case("hugging-face-int", "spec.export.huggingFace", {"spec.export.huggingFace": 1}),
        Case("image-int", "spec.image", {"spec.image": 42}),
        Case("size-int", "spec.model.size", {"spec.model.size": 12}),
    ),
    "missing-required": (
        Case("missing-model", "spec.model", {"spec.model": UNSET}),
        Case("missing-training", "spec.training", {"spec.training": UNSET}),
        Case("missing-tpu", "spec.tpu", {"spec.tpu": UNSET}),
        Case(
            "batch-size-missing",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": UNSET},
        ),
        Case("accelerator-missing", "spec.tpu.accelerator", {"spec.tpu.accelerator": UNSET}),
        Case(
            "explicit-without-num-layers",
            "spec.model.numLayers",
            {"spec.model.numLayers": UNSET},
            base="records",
        ),
    ),
    "impossible-topology": (
        Case(
            "v5p-with-2d-topology",
            "spec.tpu.topology",
            {"spec.tpu.topology": "2x4"},
            base="checkpoint",
        ),
        Case(
            "v6e-with-3d-topology",
            "spec.tpu.topology",
            {"spec.tpu.accelerator": "tpu-v6e-slice"},
        ),
        Case("v4-with-v5p-only-shape", "spec.tpu.topology", {"spec.tpu.topology": "16x16x24"}),
        Case(
            "v5p-with-v4-only-shape",
            "spec.tpu.topology",
            {"spec.tpu.topology": "8x8x12"},
            base="checkpoint",
        ),
        Case(
            "v5e-with-3d-topology",
            "spec.tpu.topology",
            {"spec.tpu.topology": "8x8x8"},
            base="records",
        ),
        Case("v4-transposed", "spec.tpu.topology", {"spec.tpu.topology": "1x2x2"}),
        Case("v5e-transposed", "spec.tpu.topology", {"spec.tpu.topology": "4x2"}, base="records"),
        Case(
            "v6e-beyond-the-pod",
            "spec.tpu.topology",
            {"spec.tpu": {"accelerator": "tpu-v6e-slice", "topology": "32x32"}},
            base="records",
        ),
        Case("topology-zero-side", "spec.tpu.topology", {"spec.tpu.topology": "0x2x2"}),
        Case("topology-four-axes", "spec.tpu.topology", {"spec.tpu.topology": "2x2x1x1"}),
        Case("topology-side-too-long", "spec.tpu.topology", {"spec.tpu.topology": "2x2x1000"}),
        Case("topology-uppercase-x", "spec.tpu.topology", {"spec.tpu.topology": "2X2X1"}),
        Case("topology-chip-count", "spec.tpu.topology", {"spec.tpu.topology": "v4-8"}),
    ),
    "tpu-host-resources": (
        # v4 2x2x1: ct4p-hightpu-4t VMs of 240 vCPUs and 407 GB.
        Case("cpu-over-the-vm", "spec.tpu.resources.cpu", {"spec.tpu.resources.cpu": "241"}),
        Case(
            "memory-over-the-vm",
            "spec.tpu.resources.memory",
            {"spec.tpu.resources.memory": "400Gi"},  # 429.5 GB
        ),
        Case(
            "v5e-single-chip-cpu",
            "spec.tpu.resources.cpu",
            {
                "spec.tpu": {
                    "accelerator": "tpu-v5-lite-podslice",
                    "topology": "1x1",
                    "resources": {"cpu": "24500m"},
                }
            },
            base="records",
        ),
        Case("cpu-not-a-quantity", "spec.tpu.resources.cpu", {"spec.tpu.resources.cpu": "2 cores"}),
        Case(
            "v6e-single-chip-memory",
            "spec.tpu.resources.memory",
            # ct6e-standard-1t: 176 GB
            {
                "spec.tpu": {
                    "accelerator": "tpu-v6e-slice",
                    "topology": "1x1",
                    "resources": {"memory": "177G"},
                }
            },
            base="records",
        ),
    ),
    "batch-not-divisible": (
        Case(
            "batch-not-divisible-v5p",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": 36},
            base="checkpoint",
        ),
        Case(
            "batch-not-divisible-v5e-2x4",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": 12},
            base="records",
        ),
        Case(
            "batch-fits-old-slice-not-new",
            "spec.training.globalBatchSize",
            {"spec.tpu.topology": "2x2x4"},
        ),
        Case(
            "batch-one-on-four-chips",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": 1},
        ),
        Case(
            "batch-below-v6e-pod",
            "spec.training.globalBatchSize",
            {"spec.tpu": {"accelerator": "tpu-v6e-slice", "topology": "16x16"}},
            base="records",
        ),
    ),
    "not-gcs-path": (
        Case(
            "output-https",
            "spec.output",
            {"spec.output": "https://storage.googleapis.com/bpj-test/runs"},
        ),
        Case("output-local", "spec.output", {"spec.output": "/tmp/runs"}),
        Case("output-no-bucket", "spec.output", {"spec.output": "gs://"}),
        Case("output-single-slash", "spec.output", {"spec.output": "gs:/bpj-test/runs"}),
        Case("output-uppercase-scheme", "spec.output", {"spec.output": "GS://bpj-test/runs"}),
        Case("output-with-space", "spec.output", {"spec.output": "gs://bpj-test/my runs"}),
        Case("corpus-s3", "spec.data.corpus", {"spec.data.corpus": ["s3://bpj-test/c/*.txt"]}),
        Case("corpus-file-uri", "spec.data.corpus", {"spec.data.corpus": ["file:///data/c.txt"]}),
        Case(
            "tfrecords-local",
            "spec.data.tfrecords",
            {"spec.data.tfrecords": "/data/*.tfrecord"},
            base="records",
        ),
        Case(
            "vocab-https",
            "spec.data.vocab",
            {"spec.data.vocab": "https://example.com/vocab.txt"},
            base="records",
        ),
        Case(
            "init-checkpoint-local",
            "spec.model.initCheckpoint",
            {"spec.model.initCheckpoint": "/ckpt/bert_model.ckpt"},
            base="checkpoint",
        ),
        Case(
            "init-checkpoint-bucket-only",
            "spec.model.initCheckpoint",
            {"spec.model.initCheckpoint": "gs://bpj-test"},
            base="checkpoint",
        ),
    ),
    "over-long": (
        Case("name-63-chars", "metadata.name", {"metadata.name": "a" * 63}),
        Case("name-254-chars", "metadata.name", {"metadata.name": "a" * 254}),
        Case("name-uppercase", "metadata.name", {"metadata.name": "Bert"}),
        Case("name-ends-with-dash", "metadata.name", {"metadata.name": "bert-"}),
        Case("name-with-underscore", "metadata.name", {"metadata.name": "bert_run"}),
        Case(
            "service-account-too-long",
            "spec.serviceAccountName",
            {"spec.serviceAccountName": "a" * 254},
        ),
        Case("queue-name-too-long", "spec.queueName", {"spec.queueName": "q" * 64}),
        Case("image-too-long", "spec.image", {"spec.image": "x" * 513}),
        Case("output-too-long", "spec.output", {"spec.output": "gs://bpj-test/" + "a" * 1011}),
        Case(
            "corpus-too-many",
            "spec.data.corpus",
            {"spec.data.corpus": [f"gs://bpj-test/c/{i}.txt" for i in range(65)]},
        ),
    ),
    "huge-number": (
        Case(
            "batch-size-huge",
            "spec.training.globalBatchSize",
            {"spec.training.globalBatchSize": 2**31},
        ),
        Case("train-steps-huge", "spec.training.trainSteps", {"spec.training.trainSteps": 10**12}),
        Case(
            "train-steps-beyond-int64",
            "spec.training.trainSteps",
            {"spec.training.trainSteps": 10**20},
        ),
        Case(
            "hidden-size-huge",
            "spec.model.hiddenSize",
            {"spec.model.hiddenSize": 100000},
            base="records",
        ),
        Case(
            "max-restarts-huge", "spec.runPolicy.maxRestarts", {"spec.runPolicy.maxRestarts": 1000}
        ),
        Case(
            "active-deadline-huge",
            "spec.runPolicy.activeDeadlineSeconds",
            {"spec.runPolicy.activeDeadlineSeconds": 10**9},
        ),
        Case(
            "ttl-negative",
            "spec.runPolicy.ttlSecondsAfterFinished",
            {"spec.runPolicy.ttlSecondsAfterFinished": -1},
        ),
        Case(
            "learning-rate-huge", "spec.training.learningRate", {"spec.training.learningRate": 10.0}
        ),
        Case("weight-decay-huge", "spec.training.weightDecay", {"spec.training.weightDecay": 2.0}),
        Case("vocab-size-huge", "spec.data.vocabSize", {"spec.data.vocabSize": 10**7}),
        Case("seed-huge", "spec.training.seed", {"spec.training.seed": 2**32}),
        Case(
            "keep-checkpoints-huge",
            "spec.training.keepCheckpoints",
            {"spec.training.keepCheckpoints": 1000},
        ),
        Case(
            "checkpoint-every-zero",
            "spec.training.checkpointEverySteps",
            {"spec.training.checkpointEverySteps": 0},
        ),
        Case(
            "max-predictions-huge",
            "spec.data.maxPredictionsPerSeq",
            {"spec.data.maxPredictionsPerSeq": 10000},
        ),
        Case("min-frequency-huge", "spec.data.minFrequency", {"spec.data.minFrequency": 10**7}),
    ),
    "unicode": (
        Case("name-accented", "metadata.name", {"metadata.name": "b\u00e9rt"}),
        Case("name-cyrillic-homoglyph", "metadata.name", {"metadata.name": "b\u0435rt"}),
        Case("output-unicode-bucket", "spec.output", {"spec.output": "gs://bpj-t\u00ebst/runs"}),
        Case(
            "topology-multiplication-sign",
            "spec.tpu.topology",
            {"spec.tpu.topology": "2\u00d72\u00d71"},
        ),
        Case(
            "accelerator-unicode-hyphen",
            "spec.tpu.accelerator",
            {"spec.tpu.accelerator": "tpu\u2010v4\u2010podslice"},
        ),
        Case("queue-name-unicode", "spec.queueName", {"spec.queueName": "qu\u00e9ue"}),
        Case(
            "service-account-unicode",
            "spec.serviceAccountName",
            {"spec.serviceAccountName": "train\u00e9r"},
        ),
        Case(
            "optimizer-fullwidth",
            "spec.training.optimizer",
            {"spec.training.optimizer": "\uff41\uff44\uff41\uff4d\uff57"},
        ),
        Case("size-unicode", "spec.model.size", {"spec.model.size": "t\u0131ny"}),
    ),
    "unknown-field": (
        Case("spec-unknown-field", "spec.resources", {"spec.resources": {"cpu": "1"}}),
        Case("training-unknown-field", "spec.training.lr", {"spec.training.lr": 0.001}),
        Case("model-unknown-field", "spec.model.layers", {"spec.model.layers": 2}),
        Case(
            "run-policy-unknown-field",
            "spec.runPolicy.backoffLimit",
            {"spec.runPolicy.backoffLimit": 3},
        ),
        Case(
            "snake-case-field",
            "spec.training.train_steps",
            {"spec.training.train_steps": 100},
        ),
        Case("miscased-field", "spec.tpu.Topology", {"spec.tpu.Topology": "2x2x1"}),
    ),
}

CASES: tuple[Case, ...] = (
    # --- schema: required fields, types, enums, ranges, patterns, unknown fields ---
    Case("missing-data", "spec.data", {"spec.data": UNSET}),
    Case("missing-output", "spec.output", {"spec.output": UNSET}),
    Case("output-not-gcs", "spec.output", {"spec.output": "s3://bpj-test/runs/case"}),
    Case("output-bad-bucket", "spec.output", {"spec.output": "gs://BPJ_Test/runs"}),
    Case("corpus-empty", "spec.data.corpus", {"spec.data.corpus": []}),
    Case("corpus-local-path", "spec.data.corpus", {"spec.data.corpus": ["/data/corpus/*.txt"]}),
    Case("corpus-trailing-slash", "spec.data.corpus", {"spec.data.corpus": ["gs://bpj-test/c/"]}),
    Case("vocab-not-gcs", "spec.data.vocab", {"spec.data.vocab": "vocab.txt"}, base="records"),
    Case("max-seq-length-too-long", "spec.data.maxSeqLength", {"spec.data.maxSeqLength": 1024}),
    Case("max-seq-length-string", "spec.data.maxSeqLength", {"spec.data.maxSeqLength": "128"}),
    Case("masked-lm-prob-one", "spec.data.maskedLmProb", {"spec.data.maskedLmProb": 1.0}),
    Case("dupe-factor-zero", "spec.data.dupeFactor", {"spec.data.dupeFactor": 0}),
    Case("short-seq-prob-negative", "spec.data.shortSeqProb", {"spec.data.shortSeqProb": -0.1}),
    Case(
        "whole-word-masking-string",
        "spec.data.wholeWordMasking",
        {"spec.data.wholeWordMasking": "yes"},
    ),
    Case(
        "data-unknown-field",
        "spec.data.vocabulary",
        {"spec.data.vocabulary": "gs://bpj-test/vocab.txt"},
    ),
    Case("model-size-unknown", "spec.model.size", {"spec.model.size": "huge"}),
    Case("hidden-size-zero", "spec.model.hiddenSize", {"spec.model.hiddenSize": 0}, base="records"),
    Case(
        "num-layers-too-many", "spec.model.numLayers", {"spec.model.numLayers": 100}, base="records"
    ),
    Case("batch-size-zero", "spec.training.globalBatchSize", {"spec.training.globalBatchSize": 0}),
    Case("train-steps-missing", "spec.training.trainSteps", {"spec.training.trainSteps": UNSET}),
    Case("learning-rate-zero", "spec.training.learningRate", {"spec.training.learningRate": 0}),
    Case("optimizer-unknown", "spec.training.optimizer", {"spec.training.optimizer": "sgd"}),
    Case("precision-unknown", "spec.training.precision", {"spec.training.precision": "float16"}),
    Case(
        "weight-decay-negative", "spec.training.weightDecay", {"spec.training.weightDecay": -0.01}
    ),
    Case(
        "accelerator-unknown", "spec.tpu.accelerator", {"spec.tpu.accelerator": "tpu-v3-podslice"}
    ),
    Case("topology-malformed", "spec.tpu.topology", {"spec.tpu.topology": "2x2x"}),
    Case("topology-missing", "spec.tpu.topology", {"spec.tpu.topology": UNSET}),
    Case("spot-string", "spec.tpu.spot", {"spec.tpu.spot": "true"}),
    Case("tpu-unknown-field", "spec.tpu.zone", {"spec.tpu.zone": "us-east5-a"}),
    Case(
        "service-account-invalid",
        "spec.serviceAccountName",
        {"spec.serviceAccountName": "Trainer_SA"},
    ),
    Case("queue-name-invalid", "spec.queueName", {"spec.queueName": "tpu queue"}),
    Case("image-empty", "spec.image", {"spec.image": ""}),
    Case("max-restarts-negative", "spec.runPolicy.maxRestarts", {"spec.runPolicy.maxRestarts": -1}),
    Case(
        "active-deadline-zero",
        "spec.runPolicy.activeDeadlineSeconds",
        {"spec.runPolicy.activeDeadlineSeconds": 0},
    ),
    Case("export-unknown-field", "spec.export.onnx", {"spec.export.onnx": True}),
    # --- CEL: data ---
    Case(
        "corpus-and-tfrecords",
        "spec.data.tfrecords",
        {"spec.data.tfrecords": "gs://bpj-test/records/*.tfrecord"},
    ),
    Case("neither-corpus-nor-tfrecords", "spec.data.corpus", {"spec.data.corpus": UNSET}),
    Case(
        "vocab-and-vocab-size",
        "spec.data.vocabSize",
        {"spec.data.vocab": "gs://bpj-test/vocab.txt"},
    ),
    Case(
        "vocab-and-min-frequency",
        "spec.data.minFrequency",
        {
            "spec.data.vocab": "gs://bpj-test/vocab.txt",
            "spec.data.vocabSize": UNSET,
            "spec.data.minFrequency": 2,
        },
    ),
    Case(
        "tfrecords-with-dupe-factor",
        "spec.data.dupeFactor",
        {"spec.data.dupeFactor": 5},
        base="records",
    ),
    Case(
        "tfrecords-with-masked-lm-prob",
        "spec.data.maskedLmProb",
        {"spec.data.maskedLmProb": 0.2},
        base="records",
    ),
    Case(
        "tfrecords-with-short-seq-prob",
        "spec.data.shortSeqProb",
        {"spec.data.shortSeqProb": 0.2},
        base="records",
    ),
    Case(
        "tfrecords-with-whole-word-masking",
        "spec.data.wholeWordMasking",
        {"spec.data.wholeWordMasking": False},
        base="records",
    ),
    Case("tfrecords-without-vocab", "spec.data.vocab", {"spec.data.vocab": UNSET}, base="records"),
    Case(
        "max-predictions-not-below-seq-length",
        "spec.data.maxPredictionsPerSeq",
        {"spec.data.maxSeqLength": 64, "spec.data.maxPredictionsPerSeq": 64},
    ),
    # --- CEL: model ---
    Case("no-model", "spec.model.size", {"spec.model": {}}),
    Case("size-and-hidden-size", "spec.model.hiddenSize", {"spec.model.hiddenSize": 128}),
    Case(
        "size-and-intermediate-size",
        "spec.model.intermediateSize",
        {"spec.model.intermediateSize": 512},
    ),
    Case(
        "explicit-without-num-heads",
        "spec.model.numHeads",
        {"spec.model.numHeads": UNSET},
        base="records",
    ),
    Case(
        "only-intermediate-size", "spec.model.hiddenSize", {"spec.model": {"intermediateSize": 512}}
    ),
    Case(
        "hidden-not-divisible-by-heads",
        "spec.model.hiddenSize",
        {"spec.model.numHeads": 3},
        base="records",
    ),
    Case("checkpoint-with-size", "spec.model.size", {"spec.model.size": "base"}, base="checkpoint"),
    Case(
        "checkpoint-with-hidden-size",
        "spec.model.hiddenSize",
        {"spec.model.hiddenSize": 768},
        base="checkpoint",
    ),
    Case(
        "checkpoint-with-vocab",
        "spec.data.vocab",
        {"spec.data.vocab": "gs://bpj-test/vocab.txt"},
        base="checkpoint",
    ),
    Case(
        "checkpoint-with-vocab-size",
        "spec.data.vocabSize",
        {"spec.data.vocabSize": 30000},
        base="checkpoint",
    ),
    Case("continued-with-size", "spec.model.size", {"spec.model.size": "base"}, base="continued"),
    Case(
        "continued-and-checkpoint",
        "spec.model.initFromOutput",
        {"spec.model.initCheckpoint": _CKPT},
        base="continued",
    ),
    Case(
        "continued-with-vocab",
        "spec.data.vocab",
        {"spec.data.vocab": "gs://bpj-test/vocab.txt"},
        base="continued",
    ),
    Case(
        "continued-from-its-own-output",
        "spec.model.initFromOutput",
        {"spec.model.initFromOutput": "gs://bpj-test/runs/case"},
        base="continued",
    ),
    Case(
        "checkpoint-index-file",
        "spec.model.initCheckpoint",
        {"spec.model.initCheckpoint": _CKPT + ".index"},
        base="checkpoint",
    ),
    Case(
        "checkpoint-data-file",
        "spec.model.initCheckpoint",
        {"spec.model.initCheckpoint": _CKPT + ".data-00000-of-00001"},
        base="checkpoint",
    ),
    # --- CEL: TPU slice and batch ---
    Case(
        "topology-of-other-generation",
        "spec.tpu.topology",
        {"spec.tpu.accelerator": "tpu-v5-lite-podslice"},
    ),
    Case(
        "topology-not-in-catalogue",
        "spec.tpu.topology",
        {"spec.tpu.topology": "2x3"},
        base="records",
    ),
    Case("topology-1x1-on-v4", "spec.tpu.topology", {"spec.tpu.topology": "1x1"}),
    Case(
        "batch-not-divisible-by-chips",
        "spec.training.globalBatchSize",
        {"spec.training.globalBatchSize": 6},
    ),
    # corpus base: 8 sequences on a 2x2x1 slice (4 chips).
    Case(
        "accumulation-not-dividing-the-batch",
        "spec.training.gradientAccumulationSteps",
        {"spec.training.gradientAccumulationSteps": 3},
    ),
    Case(
        "micro-batch-not-divisible-by-chips",
        "spec.training.gradientAccumulationSteps",
        {"spec.training.gradientAccumulationSteps": 4},  # 2 sequences on 4 chips
    ),
    Case(
        "accumulation-zero",
        "spec.training.gradientAccumulationSteps",
        {"spec.training.gradientAccumulationSteps": 0},
    ),
    Case(
        "batch-not-divisible-on-v6e",
        "spec.training.globalBatchSize",
        {
            "spec.tpu": {"accelerator": "tpu-v6e-slice", "topology": "4x4"},
            "spec.training.globalBatchSize": 24,
        },
        base="records",
    ),
    Case(
        "warmup-exceeds-train-steps",
        "spec.training.warmupSteps",
        {"spec.training.warmupSteps": 101},
    ),
    # --- CEL: training phases ---
    *(
        Case(
            f"phases-with-{field.split('.')[-1]}",
            f"spec.{field}",
            {f"spec.{field}": value},
            "phased",
        )
        for field, value in (
            ("training.trainSteps", 100),
            ("training.globalBatchSize", 8),
            ("training.warmupSteps", 10),
            ("data.maxSeqLength", 128),
            ("data.maxPredictionsPerSeq", 20),
        )
    ),
    Case(
        "phases-with-prepared-records",
        "spec.data.tfrecords",
        {
            "spec.data.corpus": UNSET,
            "spec.data.vocabSize": UNSET,
            "spec.data.tfrecords": "gs://bpj-test/records/*.tfrecord",
            "spec.data.vocab": "gs://bpj-test/records/vocab.txt",
        },
        "phased",
    ),
    Case("phases-empty", "spec.training.phases", {"spec.training.phases": []}, "phased"),
    Case(
        "phase-predictions-not-below-length",
        "spec.training.phases[].maxPredictionsPerSeq",
        {"spec.training.phases": [_phase(maxPredictionsPerSeq=64)]},
        "phased",
    ),
    Case(
        "phase-warmup-exceeds-its-steps",
        "spec.training.phases[].warmupSteps",
        {"spec.training.phases": [_phase(warmupSteps=91)]},
        "phased",
    ),
    Case(
        "phase-batch-not-divisible-by-chips",
        "spec.training.phases[].globalBatchSize",
        {"spec.training.phases": [_phase(), _phase(globalBatchSize=6, maxSeqLength=128)]},
        "phased",
    ),
    Case(
        "phase-accumulation-not-dividing-its-batch",
        "spec.training.phases[].gradientAccumulationSteps",
        {"spec.training.phases": [_phase(gradientAccumulationSteps=3)]},
        "phased",
    ),
    Case(
        "phases-of-one-length-with-two-predictions",
        "spec.training.phases[].maxPredictionsPerSeq",
        {"spec.training.phases": [_phase(), _phase(maxPredictionsPerSeq=12)]},
        "phased",
    ),
    Case(
        "phases-too-many",
        "spec.training.phases",
        {"spec.training.phases": [_phase()] * 9},
        "phased",
    ),
    Case(
        "phase-without-length",
        "spec.training.phases[0].maxSeqLength",
        {"spec.training.phases": [{k: v for k, v in _phase().items() if k != "maxSeqLength"}]},
        "phased",
    ),
    # --- CEL: held-out evaluation ---
    Case(
        "eval-fraction-and-eval-records",
        "spec.data.evalTfrecords",
        {"spec.data.evalFraction": 0.1, "spec.data.evalTfrecords": "gs://bpj-test/eval/*.tfrecord"},
    ),
    Case(
        "eval-fraction-with-prepared-records",
        "spec.data.evalFraction",
        {"spec.data.evalFraction": 0.1},
        base="records",
    ),
    Case("eval-fraction-above-half", "spec.data.evalFraction", {"spec.data.evalFraction": 0.6}),
    Case(
        "eval-every-steps-without-held-out-records",
        "spec.training.evalEverySteps",
        {"spec.training.evalEverySteps": 10},
    ),
    Case(
        "eval-batches-without-held-out-records",
        "spec.training.evalBatches",
        {"spec.training.evalBatches": 10},
    ),
    Case(
        "eval-records-with-phases",
        "spec.data.evalTfrecords",
        {"spec.data.evalTfrecords": "gs://bpj-test/eval/*.tfrecord"},
        "phased",
    ),
    # --- CEL: metadata ---
    Case("name-too-long", "metadata.name", {"metadata.name": "a" * 41}),
    Case("name-starts-with-digit", "metadata.name", {"metadata.name": "1st-run"}),
    Case("name-with-dot", "metadata.name", {"metadata.name": "bert.v1"}),
    *(case for cases in CATEGORIES.values() for case in cases),
)

#: Updates frozen once the job started (status.startTime set), one per immutable field.
UPDATE_CASES: tuple[UpdateCase, ...] = (
    UpdateCase("data", "spec.data", {"spec.data.maxSeqLength": 256}),
    UpdateCase("model", "spec.model", {"spec.model.size": "mini"}),
    UpdateCase("tpu", "spec.tpu", {"spec.tpu.topology": "2x2x2"}),
    UpdateCase("output", "spec.output", {"spec.output": "gs://bpj-test/runs/other"}),
    UpdateCase(
        "global-batch-size", "spec.training.globalBatchSize", {"spec.training.globalBatchSize": 16}
    ),
    UpdateCase("optimizer", "spec.training.optimizer", {"spec.training.optimizer": "lamb"}),
    UpdateCase(
        "phases",
        "spec.training.phases",
        {"spec.training.phases": [_phase(trainSteps=80)]},
        "phased",
    ),
)
#: An update that stays allowed after the start (e.g. training longer).
MUTABLE_UPDATE: Mapping[str, Any] = {
    "spec.training.trainSteps": 200,
    "spec.runPolicy.suspend": True,
}
#: What the operator writes when it starts a job (freezes the immutable fields).
STARTED_STATUS: Mapping[str, Any] = {"startTime": "2025-01-01T00:00:00Z", "phase": "Preparing"}


def updated(base: str, changes: Mapping[str, Any], name: str = "case") -> dict[str, Any]:
    """``BASES[base]`` named ``name`` with ``changes`` applied."""
    return Case("update", "", changes, base).manifest(name)
