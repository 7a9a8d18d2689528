"""The ``train`` command: masked-LM + next-sentence pretraining with ``tf.distribute``.

``run`` wires the pieces: ``strategy`` (TPU or default), ``data`` (TFRecords
to fixed-shape batches), ``optimizer`` (AdamW/LAMB and the schedule), ``step``
(the compiled multi-step train function), ``loop`` (pacing, checkpoints,
summaries, progress), ``checkpoint``, ``tf1_init`` (Google checkpoints),
``progress`` (status reports) and ``signals`` (SIGTERM). Import
``bert_trainer.train.run`` for the entry point; this package imports no
TensorFlow by itself.
"""
