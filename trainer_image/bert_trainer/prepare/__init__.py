"""The ``prepare`` command: a WordPiece vocab and google-research/bert pretraining records.

``run_prepare`` is the entry point; the modules are its stages in order:
``documents`` (corpus -> tokenized sentences), ``vocab`` (train or read),
``instances`` (next-sentence pairs), ``masking`` (masked-LM features),
``tfrecord`` (Example protos and TFRecord framing) and ``run`` (orchestration).
"""

from bert_trainer.prepare.run import PrepareResult, run_prepare

__all__ = ["PrepareResult", "run_prepare"]
