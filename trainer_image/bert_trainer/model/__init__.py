"""BERT for pretraining: keras-hub's backbone with Google's masked-LM and NSP heads.

``pretrainer`` builds the Keras model, ``losses`` defines the objective and its
metrics, ``google_names`` presents the weights under google-research/bert's TF1
names (the common ground for TF1 initialisation and the HuggingFace export).
"""

from bert_trainer.model.google_names import (
    GoogleVariable,
    assign_google_weights,
    google_variables,
    google_weights,
)
from bert_trainer.model.losses import (
    STATISTICS,
    PretrainingMetrics,
    batch_totals,
    pretraining_loss,
)
from bert_trainer.model.pretrainer import BertPretrainer, build_pretrainer

__all__ = [
    "STATISTICS",
    "BertPretrainer",
    "GoogleVariable",
    "PretrainingMetrics",
    "assign_google_weights",
    "batch_totals",
    "build_pretrainer",
    "google_variables",
    "google_weights",
    "pretraining_loss",
]
