"""The BERT pretraining trainer: ``prepare``, ``train`` and ``export`` commands.

The configuration model (``bert_trainer.config``) and the contracts with the
operator (``bert_trainer.contract``) import no TensorFlow, so the operator can
render and validate trainer configurations without it.
"""
