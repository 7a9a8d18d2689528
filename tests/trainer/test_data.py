"""How the input pipelines of a slice's hosts split the records between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.helpers import PREDICTIONS, SEQ_LENGTH, write_records


def test_files_go_to_hosts_only_when_they_divide_evenly() -> None:
    from bert_trainer.train.data import pipeline_files

    files = [f"part-{i}" for i in range(8)]
    assert [pipeline_files(files, 4, i) for i in range(4)] == [
        files[0::4], files[1::4], files[2::4], files[3::4]
    ]  # fmt: skip
    # 10 files on 4 hosts: files[i::4] would give two hosts 3 files and two hosts 2.
    ten = [f"part-{i}" for i in range(10)]
    assert all(pipeline_files(ten, 4, i) == ten for i in range(4))
    assert pipeline_files(ten, 1, 0) == ten


@pytest.mark.tensorflow
@pytest.mark.parametrize("shards", [3, 4])
def test_hosts_read_each_record_once_between_them(tmp_path: Path, shards: int) -> None:
    """Over one epoch the hosts read disjoint records, together all of them, equally."""
    import tensorflow as tf

    from bert_trainer.train.data import RecordShape, make_dataset

    count, hosts = 48, 2
    pattern = write_records(tmp_path, count=count, shards=shards)
    files = sorted(tf.io.gfile.glob(pattern))
    seen: list[list[tuple[int, ...]]] = []
    for host in range(hosts):
        context = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=host)
        dataset = make_dataset(
            files, RecordShape(SEQ_LENGTH, PREDICTIONS), 1, seed=7, input_context=context,
            shuffle=False,
        )  # fmt: skip
        records = [
            tuple(np.asarray(features["token_ids"][0]).tolist())
            for features, _ in dataset.take(count // hosts)
        ]
        seen.append(records)
    assert [len(set(r)) for r in seen] == [count // hosts] * hosts
    assert not set(seen[0]) & set(seen[1])
