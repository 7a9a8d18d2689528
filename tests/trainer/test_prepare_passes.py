"""The preparation as passes over pods: the same bytes for any pod count, reruns, balance."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bert_trainer import contract, storage
from bert_trainer.__main__ import main
from bert_trainer.config import JobRef, PrepareConfig, TrainerConfig
from bert_trainer.prepare import fragments, run_prepare, shards, source, tfrecord, vocab, workdir
from bert_trainer.prepare import plan as plans
from bert_trainer.prepare.passes import run_pass
from bert_trainer.prepare.steps import count_words
from bert_trainer.storage import InputError
from tests.trainer.conftest import pass_config, prepare_outputs, run_passes, synthetic_corpus


def load_plan(config: PrepareConfig) -> plans.Plan:
    return plans.Plan.from_json(storage.read_text(workdir.plan_path(config.work_dir or "")))


@pytest.fixture(scope="module")
def reference(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """What ``run_prepare`` (every pass in one process, a temporary work dir) writes."""
    config = pass_config(corpus_dir, tmp_path_factory.mktemp("reference"), work_dir=None)
    run_prepare(config)
    return prepare_outputs(config)


# --- The same bytes for any number of pods -------------------------------------------------


@pytest.mark.parametrize(
    "pods",
    [1, 3, {"count": 2, "records": 5, "shards": 3}],
    ids=["1-pod", "3-pods", "2-5-3-pods"],
)
def test_any_pod_count_writes_the_bytes_of_one_process(
    corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes], pods: Any
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    run_passes(config, pods, order_seed=7)
    assert prepare_outputs(config) == reference
    assert len(reference) == 5  # 4 shards and the vocab
    plan = load_plan(config)
    assert len(plan.chunks) > 10
    records_pods = pods if isinstance(pods, int) else pods["records"]
    # Every pod had chunks: the pods really split the work.
    assert all(plans.assigned(plan, records_pods, i) for i in range(records_pods))


def test_a_given_vocab_skips_the_count_and_gives_the_same_bytes(
    corpus_dir: Path, tmp_path: Path
) -> None:
    given = tmp_path / "given-vocab.txt"
    run_prepare(pass_config(corpus_dir, tmp_path / "trained", work_dir=None))
    given.write_bytes((tmp_path / "trained" / "vocab.txt").read_bytes())
    single = pass_config(corpus_dir, tmp_path / "single", work_dir=None, vocab=str(given))
    run_prepare(single)
    config = pass_config(corpus_dir, tmp_path / "pods", vocab=str(given))
    run_passes(config, 3)
    assert prepare_outputs(config) == prepare_outputs(single)
    assert not (Path(config.work_dir or "") / "counts").exists()
    assert (
        json.loads((Path(config.work_dir or "") / "done" / "count-0.json").read_text())["report"]
        == {}
    )


def test_the_merged_counts_are_the_whole_corpus_counts_and_give_its_vocab(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    run_pass(config, "plan", 0, 1)
    for index in (2, 0, 1):
        run_pass(config, "count", index, 3)
    plan = load_plan(config)
    merged: dict[str, int] = {}
    lines = 0
    for chunk in plan.chunks:
        words, counts, chunk_lines = workdir.read_counts(
            workdir.counts_path(config.work_dir or "", chunk.index)
        )
        lines += chunk_lines
        for word, n in zip(words, counts, strict=True):
            merged[word] = merged.get(word, 0) + n
    # The whole corpus as one chunk, counted in one go.
    whole = source.plan_chunks(source.sizes(storage.glob(config.corpus[0])), 1 << 30)
    assert len(whole) == 1 < len(plan.chunks)
    whole_counts, whole_lines = count_words(whole, config.lowercase, 1)
    assert list(merged.items()) == list(whole_counts.items())  # first-appearance order too
    assert lines == whole_lines

    run_pass(config, "vocab", 0, 1)
    tokens = vocab.train_vocab(
        list(whole_counts),
        list(whole_counts.values()),
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
    )
    assert Path(config.output_vocab).read_text() == vocab.vocab_text(tokens)
    assert not list(Path(config.work_dir or "").glob("counts/*")), "counts kept after the vocab"


@pytest.mark.tensorflow
def test_the_records_of_pods_parse_with_googles_feature_spec(
    corpus_dir: Path, tmp_path: Path
) -> None:
    from tests.trainer.test_prepare import parse_with_tensorflow

    config = pass_config(corpus_dir, tmp_path)
    run_passes(config, 3)
    paths = sorted(str(p) for p in Path(config.output_tfrecords).glob("*.tfrecord"))
    arrays = parse_with_tensorflow(paths, config.max_seq_length, config.max_predictions_per_seq)
    instances = sum(
        json.loads((Path(config.work_dir or "") / "done" / f"records-{i}.json").read_text())[
            "report"
        ]["instances"]
        for i in range(3)
    )
    assert arrays["input_ids"].shape == (instances, config.max_seq_length)
    assert set(arrays["next_sentence_labels"].ravel().tolist()) == {0, 1}


# --- Reruns ------------------------------------------------------------------------------


class Crash(Exception):
    """A pod dying mid-pass."""


def test_an_index_that_crashed_midway_redoes_its_share_to_the_same_bytes(
    corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    work = Path(config.work_dir or "")
    run_pass(config, "plan", 0, 1)
    for index in range(2):
        run_pass(config, "count", index, 2)
    run_pass(config, "vocab", 0, 1)
    run_pass(config, "records", 0, 2)

    # Records index 1 dies after uploading some of its fragments (and some chunks' stats).
    uploads = 0
    upload = storage.upload_file

    def dying_upload(local: str, path: str) -> None:
        nonlocal uploads
        uploads += 1
        if uploads > 20:
            raise Crash(path)
        upload(local, path)

    with monkeypatch.context() as m:
        m.setattr(storage, "upload_file", dying_upload)
        with pytest.raises(Crash):
            run_pass(config, "records", 1, 2)
    assert not (work / "done" / "records-1.json").exists()
    assert uploads > 20
    run_pass(config, "records", 1, 2)

    # Shards index 0 dies after writing its first shard, before its second and its marker.
    written = 0
    write_shard = shards.write_shard

    def dying_write(job: shards.ShardJob) -> int:
        nonlocal written
        if written == 1:
            raise Crash(job.destination)
        written += 1
        return write_shard(job)

    with monkeypatch.context() as m:
        m.setattr(shards, "write_shard", dying_write)
        with pytest.raises(Crash):
            run_pass(config, "shards", 0, 2)
    assert (Path(config.output_tfrecords) / "part-00000-of-00004.tfrecord").exists()
    assert not (work / "done" / "shards-0.json").exists()
    run_pass(config, "shards", 0, 2)
    run_pass(config, "shards", 1, 2)
    assert prepare_outputs(config) == reference
    # Intermediates are gone once every shard is written.
    assert not list(work.glob("records/*/shard-*"))
    assert not list(work.glob("counts/*"))


def test_an_index_with_its_marker_only_reports_again(
    corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    run_passes(config, 2)
    work = Path(config.work_dir or "")
    reports = {p.stem: json.loads(p.read_text())["report"] for p in work.glob("done/*.json")}
    assert sorted(reports) == [
        "count-0",
        "count-1",
        "plan-0",
        "records-0",
        "records-1",
        "shards-0",
        "shards-1",
        "vocab-0",
    ]

    def no_work(*args: Any) -> Any:
        raise AssertionError("a finished index worked again")

    monkeypatch.setattr(fragments, "write_chunk", no_work)
    monkeypatch.setattr(shards, "write_shard", no_work)
    monkeypatch.setattr("bert_trainer.prepare.steps.count_words", no_work)
    monkeypatch.setattr("bert_trainer.prepare.steps.train_and_write_vocab", no_work)
    for key, report in reports.items():
        prepare_pass, index = key.split("-")
        pods = 1 if prepare_pass in ("plan", "vocab") else 2
        assert run_pass(config, prepare_pass, int(index), pods) == report
    assert prepare_outputs(config) == reference


def test_an_index_whose_marker_was_lost_redoes_its_share(
    corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes]
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    work = Path(config.work_dir or "")
    for prepare_pass in contract.PREPARE_PASSES:
        pods = 1 if prepare_pass in ("plan", "vocab") else 2
        for index in range(pods):
            run_pass(config, prepare_pass, index, pods)
            if prepare_pass in ("count", "records") and index == 1:
                # Died after its outputs, before its marker: the rerun overwrites them.
                (work / "done" / f"{prepare_pass}-1.json").unlink()
                run_pass(config, prepare_pass, 1, pods)
    assert prepare_outputs(config) == reference


def test_intermediates_of_other_settings_are_never_taken_for_these(
    corpus_dir: Path, tmp_path: Path
) -> None:
    """A reused work dir: every marker of another seed is stale, and so is the plan."""
    first = pass_config(corpus_dir, tmp_path / "first", seed=1)
    run_passes(first, 2)
    fresh = pass_config(corpus_dir, tmp_path / "fresh", seed=2)
    run_passes(fresh, 2)
    reused = pass_config(corpus_dir, tmp_path / "reused", seed=2, work_dir=first.work_dir)
    run_passes(reused, 2)
    assert prepare_outputs(reused) == prepare_outputs(fresh) != prepare_outputs(first)
    # Two configurations at once in one work dir (two jobs, one output) is bad input.
    with pytest.raises(InputError, match="holds the plan of other prepare settings"):
        run_pass(first, "records", 0, 2)


def test_a_pass_before_its_inputs_exist_is_an_infrastructure_failure(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    with pytest.raises(RuntimeError, match="plan pass did not write it"):
        run_pass(config, "count", 0, 2)
    run_pass(config, "plan", 0, 1)
    with pytest.raises(RuntimeError, match="count pass did not write it"):
        run_pass(config, "vocab", 0, 1)
    with pytest.raises(RuntimeError, match="vocab pass did not write it"):
        run_pass(config, "records", 0, 1)
    with pytest.raises(RuntimeError, match="records pass did not write it"):
        run_pass(config, "shards", 0, 1)


# --- Balance -----------------------------------------------------------------------------


def test_shards_are_balanced_within_the_documented_bound(corpus_dir: Path, tmp_path: Path) -> None:
    config = pass_config(corpus_dir, tmp_path, num_shards=5)
    work = config.work_dir or ""
    for prepare_pass in ("plan", "count", "vocab", "records"):
        run_pass(config, prepare_pass, 0, 1)
    plan = load_plan(config)
    stats = fragments.read_stats(work, plan.chunks)
    for chunk, s in zip(plan.chunks, stats, strict=True):
        dealt = []
        for shard in range(5):
            sizes = Path(workdir.sizes_path(workdir.fragment_path(work, chunk.index, shard)))
            dealt.append(len(np.fromfile(sizes, dtype=np.int64)) if sizes.exists() else 0)
        # Within a chunk: at most one apart, the extras from the chunk's own shard on.
        assert sum(dealt) == s.instances
        assert max(dealt) - min(dealt) <= 1
        extras = [(chunk.index + j) % 5 for j in range(s.instances % 5)]
        assert [shard for shard in range(5) if dealt[shard] > min(dealt)] == sorted(extras)
    run_pass(config, "shards", 0, 1)
    counts = [
        len(list(tfrecord.read_records(p.read_bytes())))
        for p in sorted(Path(config.output_tfrecords).glob("*.tfrecord"))
    ]
    assert sum(counts) == sum(s.instances for s in stats)
    # Over the chunks: at most one apart per chunk whose count is not a multiple of 5.
    bound = sum(1 for s in stats if s.instances % 5)
    assert max(counts) - min(counts) <= bound, (counts, bound)
    assert len(plan.chunks) > 10 and bound > 1


# --- Bad input ---------------------------------------------------------------------------


def test_the_passes_keep_the_bad_input_errors(corpus_dir: Path, tmp_path: Path) -> None:
    missing = pass_config(corpus_dir, tmp_path / "a", corpus=[str(tmp_path / "none-*.txt")])
    with pytest.raises(InputError, match="matches no file"):
        run_pass(missing, "plan", 0, 1)

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(3):
        (blank / f"{i}.txt").write_text("\n\n   \n" * 2000)
    empty = pass_config(blank, tmp_path / "b")
    run_pass(empty, "plan", 0, 1)
    for index in range(2):
        run_pass(empty, "count", index, 2)
    with pytest.raises(InputError, match="holds no text"):
        run_pass(empty, "vocab", 0, 1)

    control = tmp_path / "control"
    control.mkdir()
    (control / "c.txt").write_text("\x01\x02\n\ufffd\n\n" * 3000)
    given = tmp_path / "vocab.txt"
    given.write_text("\n".join(vocab.SPECIAL_TOKENS) + "\nthe\n")
    nothing = pass_config(control, tmp_path / "c", vocab=str(given))
    for prepare_pass in ("plan", "vocab", "records"):
        run_pass(nothing, prepare_pass, 0, 1)
    assert len(load_plan(nothing).chunks) > 1
    with pytest.raises(InputError, match="tokenizes to nothing"):
        run_pass(nothing, "shards", 1, 2)

    latin1 = tmp_path / "latin1"
    latin1.mkdir()
    (latin1 / "l.txt").write_bytes("caf\xe9 au lait.\n".encode("latin-1"))
    bad = pass_config(latin1, tmp_path / "d")
    run_pass(bad, "plan", 0, 1)
    with pytest.raises(InputError, match="not UTF-8"):
        run_pass(bad, "count", 0, 1)


def test_a_corpus_file_that_changed_after_the_plan_is_bad_input(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(synthetic_corpus(30, seed=3))
    config = pass_config(corpus, tmp_path / "out")
    run_pass(config, "plan", 0, 1)
    (corpus / "a.txt").write_text(synthetic_corpus(31, seed=3))
    with pytest.raises(InputError, match="changed while the job prepared its records"):
        run_pass(config, "count", 0, 1)


def test_indexes_outside_the_pass_are_bad_input(corpus_dir: Path, tmp_path: Path) -> None:
    config = pass_config(corpus_dir, tmp_path)
    with pytest.raises(InputError, match="no index 3 of 3"):
        run_pass(config, "records", 3, 3)
    with pytest.raises(InputError, match="no index 1 of 1"):
        run_pass(config, "plan", 1, 4)  # one pod whatever --workers says
    with pytest.raises(InputError, match="no index 0 of 0"):
        run_pass(config, "count", 0, 0)
    with pytest.raises(InputError, match="workDir"):
        run_pass(config.model_copy(update={"work_dir": None}), "plan", 0, 1)


def test_run_prepare_removes_its_temporary_work_dir(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = run_prepare(pass_config(corpus_dir, tmp_path / "out", work_dir=None))
    assert result.instances > 0 and result.vocab_size > 0
    assert list(scratch.iterdir()) == []
    # With a work dir, what stays is the plan and the markers.
    config = pass_config(corpus_dir, tmp_path / "kept")
    run_prepare(config)
    kept = {
        p.relative_to(config.work_dir or "").as_posix()
        for p in Path(config.work_dir or "").rglob("*")
        if p.is_file()
    }
    assert {k for k in kept if not k.startswith("records/")} == {
        "plan.json",
        *(f"done/{p}-0.json" for p in contract.PREPARE_PASSES),
    }
    assert all(k.endswith("/stats.json") for k in kept if k.startswith("records/"))


# --- gs:// -------------------------------------------------------------------------------


@pytest.mark.gcs
def test_passes_on_gcs_write_the_bytes_of_one_local_process(
    gcs_bucket: str, corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes]
) -> None:
    root = f"gs://{gcs_bucket}"
    for path in sorted(corpus_dir.glob("*.txt")):
        storage.upload_file(str(path), f"{root}/corpus/{path.name}")
    config = pass_config(
        corpus_dir,
        tmp_path,
        corpus=[f"{root}/corpus/*.txt"],
        work_dir=f"{root}/out/prepare",
        output_vocab=f"{root}/out/vocab.txt",
        output_tfrecords=f"{root}/out/tfrecords",
    )
    run_passes(config, 2)
    written = {
        p.rsplit("/", 1)[-1]: storage.read_bytes(p)
        for p in storage.glob(f"{root}/out/tfrecords/*.tfrecord")
    }
    written["vocab.txt"] = storage.read_bytes(config.output_vocab)
    assert written == reference
    plan = plans.Plan.from_json(storage.read_text(f"{root}/out/prepare/plan.json"))
    assert all(f.generation for f in plan.files)
    assert not storage.glob(f"{root}/out/prepare/records/*/shard-*")

    # An object replaced or deleted after the plan is bad input: retries would read it again.
    storage.upload_file(str(corpus_dir / "part-b.txt"), f"{root}/corpus/part-a.txt")
    storage.delete(f"{root}/out/prepare/done/records-0.json")
    with pytest.raises(InputError, match=r"part-a\.txt was replaced while the job prepared"):
        run_pass(config, "records", 0, 2)
    storage.delete(f"{root}/corpus/part-a.txt")
    with pytest.raises(InputError, match=r"part-a\.txt was deleted while the job prepared"):
        run_pass(config, "records", 0, 2)


# --- The command line --------------------------------------------------------------------


def write_config(path: Path, config: PrepareConfig, job: JobRef | None = None) -> str:
    path.write_text(TrainerConfig(prepare=config, job=job).model_dump_json(by_alias=True))
    return str(path)


def test_the_cli_needs_a_work_dir_for_a_pass(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message))
    path = write_config(tmp_path / "c.json", pass_config(corpus_dir, tmp_path, work_dir=None))
    assert main(["prepare", "--config", path, "--pass", "plan"]) == contract.EXIT_BAD_INPUT
    assert "workDir" in message.read_text()
    assert main(["prepare", "--config", path, "--workers", "2"]) == contract.EXIT_BAD_INPUT
    assert "needs --pass" in message.read_text()


def test_the_cli_runs_the_index_of_its_pod(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message))
    config = pass_config(corpus_dir, tmp_path)
    work = Path(config.work_dir or "")
    path = write_config(tmp_path / "c.json", config)
    monkeypatch.delenv(contract.ENV_COMPLETION_INDEX, raising=False)
    assert main(["prepare", "--config", path, "--pass", "plan", "--workers", "3"]) == 0
    monkeypatch.setenv(contract.ENV_COMPLETION_INDEX, "2")
    assert main(["prepare", "--config", path, "--pass", "count", "--workers", "3"]) == 0
    assert [p.name for p in sorted(work.glob("done/*"))] == ["count-2.json", "plan-0.json"]
    # The vocab needs every index's counts: count-0 and count-1 did not run.
    monkeypatch.setenv(contract.ENV_COMPLETION_INDEX, "0")
    code = main(["prepare", "--config", path, "--pass", "vocab", "--workers", "3"])
    assert code == contract.EXIT_INFRASTRUCTURE
    assert "count pass did not write it" in message.read_text()
    for bad in ("x", "-1"):
        monkeypatch.setenv(contract.ENV_COMPLETION_INDEX, bad)
        code = main(["prepare", "--config", path, "--pass", "count", "--workers", "3"])
        assert code == contract.EXIT_BAD_INPUT, bad
        assert contract.ENV_COMPLETION_INDEX in message.read_text()
    monkeypatch.setenv(contract.ENV_COMPLETION_INDEX, "3")
    code = main(["prepare", "--config", path, "--pass", "count", "--workers", "3"])
    assert code == contract.EXIT_BAD_INPUT


# --- Several lengths from one reading --------------------------------------------------


def test_extra_lengths_come_from_one_tokenizing_of_each_chunk(
    corpus_dir: Path,
    tmp_path: Path,
    reference: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job's phases: the first length's bytes are the single-length run's, for any
    pod count; the second's parse at its own length; each chunk is tokenized once."""
    from bert_trainer.config import RecordSet
    from bert_trainer.prepare import steps
    from tests.trainer.test_prepare import parse_with_tensorflow

    longer = RecordSet(
        max_seq_length=128, max_predictions_per_seq=20, output_tfrecords=str(tmp_path / "seq-128")
    )
    tokenized: list[int] = []
    tokenize = steps.tokenize_chunk

    def counting(chunk: source.Chunk, *args: Any) -> Any:
        tokenized.append(chunk.index)
        return tokenize(chunk, *args)

    monkeypatch.setattr(steps, "tokenize_chunk", counting)
    outputs = []
    for pods, root in ((1, tmp_path / "one"), (3, tmp_path / "three")):
        config = pass_config(corpus_dir, root, extra_lengths=[longer.model_copy(
            update={"output_tfrecords": str(root / "seq-128")}
        )])  # fmt: skip
        run_passes(config, pods, order_seed=3)
        second = config.for_record_set(1)
        outputs.append((prepare_outputs(config), prepare_outputs(second)))
        chunks = len(load_plan(config).chunks)
        assert sorted(tokenized) == list(range(chunks)), "one tokenizing per chunk"
        tokenized.clear()
        # Every intermediate of both lengths is gone once the shards are written.
        assert not list(Path(config.work_dir or "").glob("records*/chunk-*/shard-*"))

    (first, second), (first_3, second_3) = outputs
    assert first == reference, "the first length is exactly the single-length preparation"
    assert (first_3, second_3) == (first, second), "the same bytes for any pod count"
    paths = sorted(
        str(tmp_path / "one" / "seq-128" / name) for name in second if "tfrecord" in name
    )
    arrays = parse_with_tensorflow(paths, 128, 20)
    short = parse_with_tensorflow(
        sorted(str(tmp_path / "one" / "tfrecords" / n) for n in first if "tfrecord" in n), 64, 10
    )
    # Longer sequences: fewer of them from the same text, each holding more tokens.
    assert 0 < len(arrays["input_ids"]) < len(short["input_ids"])
    tokens = arrays["input_mask"].sum(axis=1).mean()
    assert tokens > short["input_mask"].sum(axis=1).mean()
    assert set(arrays["next_sentence_labels"].ravel().tolist()) == {0, 1}


def test_two_record_sets_of_one_length_are_refused(corpus_dir: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from bert_trainer.config import RecordSet

    same = RecordSet(
        max_seq_length=64, max_predictions_per_seq=10, output_tfrecords=str(tmp_path / "other")
    )
    with pytest.raises(ValidationError, match="same maxSeqLength"):
        pass_config(corpus_dir, tmp_path, extra_lengths=[same])


def test_held_out_documents_make_their_own_records_for_any_pod_count(
    corpus_dir: Path, tmp_path: Path, reference: dict[str, bytes]
) -> None:
    """evalFraction: a seeded fifth of the documents, as records of their own; the rest
    train. The same bytes for any pod count; no document in both."""
    from bert_trainer.config import RecordSet
    from tests.trainer.test_prepare import parse_with_tensorflow

    outputs = []
    for pods, root in ((1, tmp_path / "one"), (3, tmp_path / "three")):
        held = RecordSet(
            max_seq_length=64,
            max_predictions_per_seq=10,
            output_tfrecords=str(root / "eval"),
            held_out=True,
            num_shards=1,
        )
        config = pass_config(corpus_dir, root, eval_fraction=0.2, extra_lengths=[held])
        run_passes(config, pods, order_seed=5)
        outputs.append((prepare_outputs(config), prepare_outputs(config.for_record_set(1))))
    (train, held), (train_3, held_3) = outputs
    assert (train_3, held_3) == (train, held)
    assert sorted(held) == ["part-00000-of-00001.tfrecord", "vocab.txt"]
    assert train != reference, "the held-out documents left the training records"

    def parsed(directory: Path, names: dict[str, bytes]) -> Any:
        paths = sorted(str(directory / n) for n in names if n.endswith(".tfrecord"))
        return parse_with_tensorflow(paths, 64, 10)

    training = parsed(tmp_path / "one" / "tfrecords", train)
    evaluation = parsed(tmp_path / "one" / "eval", held)
    whole = len(training["input_ids"]) + len(evaluation["input_ids"])
    # About a fifth of the instances (documents are drawn, not instances: a loose bound).
    assert 0.1 < len(evaluation["input_ids"]) / whole < 0.3

    def segments(arrays: Any) -> set[tuple[int, ...]]:
        # Segment A's tokens: an instance's first sentence run, from one document.
        out = set()
        for ids, seg in zip(arrays["input_ids"], arrays["segment_ids"], strict=True):
            a = ids[1 : int(np.argmax(seg)) - 1] if seg.any() else ids[1:]
            out.add(tuple(int(t) for t in a if t not in (0, 4)))
        return out

    overlap = segments(training) & segments(evaluation)
    assert len(overlap) < 0.02 * len(segments(evaluation)), "held-out text also trains"


def test_selected_documents_keep_their_sentences_and_tokens() -> None:
    from bert_trainer.prepare.documents import pack

    # Three documents of 2, 1 and 3 sentences.
    lengths = np.array([2, 3, 1, 4, 2, 2], dtype=np.int64)
    ids = np.arange(int(lengths.sum()), dtype=np.int32)
    corpus = pack([1, 1, 2, 3, 3, 3], ids, lengths)
    picked = corpus.select(np.array([True, False, True]))
    assert picked.num_documents == 2 and picked.num_sentences == 5
    assert picked.token_ids.tolist() == ids[:5].tolist() + ids[6:].tolist()
    assert picked.sentence_starts.tolist() == [0, 2, 5, 9, 11, 13]
    assert picked.document_starts.tolist() == [0, 2, 5]
    rest = corpus.select(np.array([False, True, False]))
    assert rest.token_ids.tolist() == [5] and rest.document_starts.tolist() == [0, 1]
