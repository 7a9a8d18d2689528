"""The ``prepare`` command: a WordPiece vocab and google-research/bert pretraining records.

``run_prepare`` is the entry point of one process; ``passes.run_pass`` runs one index
of one pass of a distributed preparation (``docs/prepare.md``). The modules:
``source`` (the corpus as chunks, read by ranges), ``plan`` (the chunk plan and each
pod's share), ``workdir`` (the intermediates' layout), ``words`` and ``vocab`` (count
and train, or read), ``documents`` (chunk -> tokenized sentences), ``instances``
(next-sentence pairs), ``masking`` (masked-LM features), ``tfrecord`` (Example protos
and framing), ``tasks`` (the parallel unit), ``fragments`` and ``shards`` (dealing,
shuffling, writing), ``reports`` (the pods' status reports), ``passes`` and ``run``
(orchestration).
"""

from bert_trainer.prepare.run import PrepareResult, run_prepare

__all__ = ["PrepareResult", "run_prepare"]
