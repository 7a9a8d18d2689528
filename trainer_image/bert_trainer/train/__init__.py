"""The ``train`` command: masked-LM + next-sentence pretraining.

One CPU host trains with ``tf.distribute`` (``run``); every TPU, one host or a
slice of several, trains the same Keras model on JAX (``multihost``, chosen by
``device`` and ``cluster``, checkpointing with ``array_checkpoint``;
``docs/multi-host.md``, ``docs/tpu-runtime.md``).

``run`` wires the pieces: ``strategy`` (TPU or default), ``data`` (TFRecords
to fixed-shape batches), ``optimizer`` (AdamW/LAMB and the schedule), ``step``
(the compiled multi-step train function), ``loop`` (pacing, checkpoints,
summaries, progress), ``checkpoint``, ``tf1_init`` (Google checkpoints),
``progress`` (status reports) and ``signals`` (SIGTERM). Import
``bert_trainer.train.run`` for the entry point; this package imports no
TensorFlow by itself.
"""
