"""The preparation's intermediates under ``PrepareConfig.work_dir``.

Layout (``<spec.output>/prepare`` on a cluster; a local temporary directory for
``run_prepare`` without a work dir)::

    plan.json                              the corpus files, sizes, generations, chunks (plan)
    counts/chunk-NNNNN.tsv.gz              a chunk's line count and word counts (count)
    records/chunk-NNNNN/shard-SSSSS        the chunk's records dealt to shard S (records)
    records/chunk-NNNNN/shard-SSSSS.sizes  their sizes, int64 little-endian (records)
    records/chunk-NNNNN/stats.json         what the chunk held and produced (records)
    records-N/...                          the same for record set N (extra_lengths[N-1])
    done/<pass>-<index>.json               an index's marker: its final report, written last

Every file is written whole (a GCS object, or a local rename), each by one index
only, and always with the same bytes for the same configuration, so a rerun
overwrites rather than mixes. A fragment with no record is not written (its
``stats.json`` says so). The vocab pass deletes ``counts/`` after its marker, each
shards index its own fragments after its marker.

``counts/chunk-NNNNN.tsv.gz`` is gzip'd UTF-8 text: the chunk's number of lines, then
one ``word<TAB>count`` line per distinct word in order of first appearance (BERT's
words hold no whitespace, so neither a tab nor a newline).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bert_trainer import storage


def plan_path(work_dir: str) -> str:
    return storage.join(work_dir, "plan.json")


def counts_path(work_dir: str, chunk: int) -> str:
    return storage.join(work_dir, "counts", f"chunk-{chunk:05d}.tsv.gz")


def records_dir(record_set: int) -> str:
    """The directory of one record set's fragments: ``records``, then ``records-1``, ..."""
    return "records" if record_set == 0 else f"records-{record_set}"


def fragment_path(work_dir: str, chunk: int, shard: int, record_set: int = 0) -> str:
    return storage.join(
        work_dir, records_dir(record_set), f"chunk-{chunk:05d}", f"shard-{shard:05d}"
    )


def sizes_path(fragment: str) -> str:
    return fragment + ".sizes"


def stats_path(work_dir: str, chunk: int, record_set: int = 0) -> str:
    return storage.join(work_dir, records_dir(record_set), f"chunk-{chunk:05d}", "stats.json")


def marker_path(work_dir: str, prepare_pass: str, index: int) -> str:
    return storage.join(work_dir, "done", f"{prepare_pass}-{index}.json")


def read_intermediate(path: str, written_by: str) -> bytes:
    """An intermediate an earlier pass wrote; its absence is no fault of the input.

    RuntimeError (exit 20), not InputError: the pass that writes it has not finished,
    or someone removed the work dir; retrying (after that pass) can help.
    """
    try:
        return storage.read_bytes(path)
    except storage.InputError as e:
        raise RuntimeError(f"{path} is missing: the {written_by} pass did not write it") from e


def write_counts(path: str, words: Sequence[str], counts: Sequence[int], lines: int) -> None:
    """A chunk's word counts, in first-appearance order, and its line count."""
    if any("\t" in w or "\n" in w for w in words):
        raise ValueError("a word holds a tab or a newline")  # BERT's words never do
    body = "".join(f"{w}\t{n}\n" for w, n in zip(words, counts, strict=True))
    # mtime=0: the same counts are the same bytes.
    storage.write_bytes(path, gzip.compress(f"{lines}\n{body}".encode(), compresslevel=1, mtime=0))


def read_counts(path: str) -> tuple[list[str], list[int], int]:
    """``(words, counts, lines)`` as ``write_counts`` wrote them."""
    text = gzip.decompress(read_intermediate(path, "count")).decode("utf-8")
    # Only "\n" ends a line: splitlines() would also cut at characters a word may hold.
    first, *lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    words: list[str] = []
    counts: list[int] = []
    for line in lines:
        word, _, n = line.partition("\t")
        words.append(word)
        counts.append(int(n))
    return words, counts, int(first)


def write_marker(path: str, workers: int, config_digest: str, report: Mapping[str, int]) -> None:
    storage.write_text(
        path,
        json.dumps(
            {"workers": workers, "configDigest": config_digest, "report": dict(report)},
            sort_keys=True,
        ),
    )


def read_marker(path: str, workers: int, config_digest: str) -> dict[str, int] | None:
    """The final report in an index's marker, if it is this configuration's and pod count's.

    A marker of another configuration (a reused work dir) or another number of pods
    (whose index had another share) is no marker: the index redoes its share.
    """
    if not storage.exists(path):
        return None
    try:
        data: dict[str, Any] = json.loads(storage.read_text(path))
    except (storage.InputError, ValueError):
        return None
    if data.get("workers") != workers or data.get("configDigest") != config_digest:
        return None
    report: dict[str, int] = data["report"]
    return report
