"""Run as ``python -m tests.trainer.init_jax DIR`` with KERAS_BACKEND=jax.

A model on the JAX backend starting from another run's checkpoints in DIR, as a TPU
slice does for ``spec.model.initFromOutput`` (test_init_from_output.py): prints JSON
with the checkpoint it read and its word embeddings' checksum, or the InputError.
"""

from __future__ import annotations

import json
import sys


def main(directory: str) -> None:
    import keras
    import numpy as np

    from bert_trainer.model import build_pretrainer
    from bert_trainer.storage import InputError
    from bert_trainer.train.checkpoint import restore_model
    from tests.trainer.helpers import TINY

    assert keras.backend.backend() == "jax"
    model = build_pretrainer(TINY)
    try:
        path = restore_model(directory, model)
    except InputError as error:
        print(json.dumps({"error": str(error)}))
        return
    embeddings = next(v for v in model.trainable_variables if "token_embedding" in v.path)
    print(json.dumps({"path": path, "sum": float(np.asarray(embeddings).sum())}))


if __name__ == "__main__":
    main(sys.argv[1])
