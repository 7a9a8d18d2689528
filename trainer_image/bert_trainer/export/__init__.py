"""The ``export`` command: a HuggingFace-loadable BERT directory from the latest checkpoint.

``hf_names`` maps Google's TF1 names (our common ground, see
``bert_trainer.model.google_names``) to HuggingFace's; ``run`` writes the
directory. Import ``bert_trainer.export.run`` for the entry point.
"""
