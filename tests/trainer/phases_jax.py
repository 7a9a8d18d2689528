"""Run as ``python -m tests.trainer.phases_jax CONFIG`` with KERAS_BACKEND=jax.

The multi-host runtime on one host (``run_multihost``), as a TPU slice trains the
phases of a job (test_phases.py): prints JSON with the first and final steps and
the last held-out evaluation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(config_path: str) -> None:
    import keras

    from bert_trainer.config import TrainerConfig
    from bert_trainer.train.cluster import SliceHosts
    from bert_trainer.train.multihost import run_multihost

    assert keras.backend.backend() == "jax"
    config = TrainerConfig.model_validate_json(Path(config_path).read_text())
    hosts = SliceHosts.from_environ({})
    result = run_multihost(config, hosts, progress_sink=_Discard())
    held = None if result.eval is None else {"step": result.eval.step, **result.eval.by_name()}
    print(json.dumps({"first": result.first_step, "final": result.final_step, "eval": held}))


class _Discard:
    def send(self, progress: object) -> None:
        pass


if __name__ == "__main__":
    main(sys.argv[1])
