"""Benchmark 1: ``bert_trainer prepare`` against google-research/bert's create_pretraining_data.py.

    .venv/bin/python benchmarks/prepare_vs_reference.py [--reference-files N] [--keep DIR]

What it does, in one run on one machine:

1. Generates a corpus of at least 20 MiB, deterministically (seeded RNG), from
   the bundled CC0 corpus (``devstack/bpj_devstack/data/corpus.txt``): every
   document is a run of its sentences in which words are swapped, with a
   Zipf-distributed choice, for pseudo-words of a 60,000-word lexicon (some of
   them accented, so non-ASCII text is exercised too). It is written as
   ``PARTS`` files of whole documents.
2. Trains one WordPiece vocab (30,522 tokens) on it with our vocab code; both
   programs are given that vocab.txt, so neither trains one in the timed part.
3. Times our ``run_prepare`` on the whole corpus and on the reference's subset.
4. Times the reference, the ``bert-tensorflow`` package from PyPI (1.0.4,
   unmodified; it imports ``tensorflow.compat.v1`` itself, so it runs on
   TensorFlow 2.21), in a subprocess on the first ``--reference-files`` files
   of the corpus: it is single-threaded Python and would need far longer
   than this benchmark's 10 minutes for the whole corpus. Its throughput per
   instance does not depend on the corpus size (both read, tokenize, pair,
   mask and write each document independently), so instances/second compare.
5. Reads both outputs of the shared subset and compares their statistics.

Both sides run with the same flags: max_seq_length 128, max_predictions_per_seq
20, masked_lm_prob 0.15, dupe_factor 5, short_seq_prob 0.1, lower case, seed
12345. Times exclude interpreter start-up and imports on both sides; ours include
loading the compiled kernels from numba's cache (about 0.3 s), which the script fills
first, as the trainer image's build does.

Each side runs ``--repeats`` times, alternating, and each side's fastest run
counts (other work on a shared machine only slows runs down); medians are
printed too. The last line is ``RATIO prepare_vs_reference <ours/reference>x
(target >= 20x)``, with our instances/second on the full corpus over the
reference's on its subset.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean, median

from machine import machine  # benchmarks/ is the script's directory

REPO = Path(__file__).resolve().parents[1]
SEED_CORPUS = REPO / "devstack" / "bpj_devstack" / "data" / "corpus.txt"

TARGET_RATIO = 20.0
CORPUS_BYTES = 20 * 1024 * 1024
PARTS = 20
CORPUS_SEED = 20240607
VOCAB_SIZE = 30522
LEXICON_SIZE = 200_000
SWAP_PROBABILITY = 0.25
"""Chance that a word of the seed corpus is replaced by a pseudo-word."""
REFERENCE_FILES = 2
"""Corpus files (of ``PARTS``) the reference runs on by default: about 2 MiB."""
REPEATS = 3

FLAGS: dict[str, int | float] = {
    "max_seq_length": 128,
    "max_predictions_per_seq": 20,
    "masked_lm_prob": 0.15,
    "dupe_factor": 5,
    "short_seq_prob": 0.1,
}
SEED = 12345
"""random_seed of the first repeat; repeat ``i`` uses ``SEED + i`` on both sides."""


# --------------------------------------------------------------------------- corpus


_ONSETS = [*"bcdfghjklmnprstvwz", "br", "cr", "dr", "gr", "pl", "st", "tr", "ch", "sh", "th"]
_VOWELS = [*"aeiou", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "nd", "st", "rk"]
_ACCENTED = str.maketrans("aeiou", "áéíóü")
_WORD = re.compile(r"^([A-Za-z]+)(.*)$")


@dataclass(frozen=True)
class CorpusInfo:
    files: list[str]
    documents: int
    sentences: int
    bytes: int


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        words.setdefault(word, None)
    return list(words)


def generate_corpus(directory: Path, target_bytes: int = CORPUS_BYTES) -> CorpusInfo:
    """Write ``PARTS`` files of documents totalling at least ``target_bytes``; deterministic."""
    rng = random.Random(CORPUS_SEED)
    source = [
        [line.strip() for line in block.splitlines() if line.strip()]
        for block in SEED_CORPUS.read_text().split("\n\n")
    ]
    source = [doc for doc in source if doc]
    lexicon = _lexicon(rng, LEXICON_SIZE)
    # Zipf-like frequencies: a few pseudo-words are common, most are rare.
    cumulative: list[float] = []
    total = 0.0
    for rank in range(len(lexicon)):
        total += 1.0 / (rank + 2.7) ** 1.05
        cumulative.append(total)

    directory.mkdir(parents=True, exist_ok=True)
    per_part = target_bytes // PARTS + 1
    files: list[str] = []
    documents = sentences = written = 0
    for part in range(PARTS):
        lines: list[str] = []
        size = 0
        while size < per_part:
            doc = rng.choice(source)
            start = rng.randrange(len(doc))
            length = rng.randint(2, 48)
            for i in range(length):
                words = doc[(start + i) % len(doc)].split(" ")
                accent = rng.random() < 0.05
                for j, token in enumerate(words):
                    if rng.random() >= SWAP_PROBABILITY:
                        continue
                    match = _WORD.match(token)
                    if match is None:
                        continue
                    pseudo = rng.choices(lexicon, cum_weights=cumulative)[0]
                    if accent and rng.random() < 0.3:
                        pseudo = pseudo.translate(_ACCENTED)
                    if match.group(1)[0].isupper():
                        pseudo = pseudo.capitalize()
                    words[j] = pseudo + match.group(2)
                line = " ".join(words)
                lines.append(line)
                size += len(line.encode()) + 1
            lines.append("")  # a blank line ends the document (and the file)
            size += 1
            documents += 1
            sentences += length
        path = directory / f"part-{part:02d}.txt"
        text = "\n".join(lines) + "\n"
        path.write_text(text, encoding="utf-8")
        written += len(text.encode())
        files.append(str(path))
    return CorpusInfo(files=files, documents=documents, sentences=sentences, bytes=written)


def count_documents(files: Sequence[str]) -> int:
    count = 0
    for path in files:
        blocks = Path(path).read_text(encoding="utf-8").split("\n\n")
        count += sum(1 for block in blocks if block.strip())
    return count


def train_shared_vocab(files: Sequence[str], path: Path) -> int:
    from bert_trainer.prepare import documents, vocab, words

    sentences = documents.split_documents(Path(f).read_text(encoding="utf-8") for f in files)
    corpus_words = words.split_words(sentences.text, lowercase=True)
    tokens = vocab.train_vocab(
        corpus_words.distinct,
        corpus_words.counts().tolist(),
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
    )
    path.write_text(vocab.vocab_text(tokens), encoding="utf-8")
    return len(tokens)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Timing:
    """One timed run: from reading the corpus to the last record written."""

    instances: int
    seconds: float
    cpu_seconds: float
    """User + system time of the process and its workers over the same span."""

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def per_cpu_second(self) -> float:
        return self.instances / self.cpu_seconds


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed_subprocess(mode: str, args: Sequence[str], log: Path) -> Timing:
    """Run this file in ``mode`` in a fresh interpreter; it prints its Timing as JSON."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    with log.open("a") as err:
        done = subprocess.run(
            [sys.executable, __file__, mode, "--", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed (exit {done.returncode}); see {log}")
    return Timing(**json.loads(done.stdout.strip().splitlines()[-1]))


def _prepare_args(files: Sequence[str], vocab_file: Path, output: Path, seed: int) -> list[str]:
    """create_pretraining_data.py's flags; ``_ours_main`` reads the same ones."""
    return [
        f"--input_file={','.join(files)}",
        f"--output_file={output}",
        f"--vocab_file={vocab_file}",
        "--do_lower_case=true",
        *(f"--{name}={value}" for name, value in FLAGS.items()),
        f"--random_seed={seed}",
    ]


def run_ours(files: Sequence[str], vocab_file: Path, output: Path, seed: int, log: Path) -> Timing:
    """Our prepare; it writes ``output/tfrecords/part-*.tfrecord``."""
    shutil.rmtree(output, ignore_errors=True)
    return _timed_subprocess("--run-ours", _prepare_args(files, vocab_file, output, seed), log)


def run_reference(
    files: Sequence[str], vocab_file: Path, output: Path, seed: int, log: Path
) -> Timing:
    """The reference; it writes ``output/reference.tfrecord``."""
    output.mkdir(parents=True, exist_ok=True)
    record_file = output / "reference.tfrecord"
    return _timed_subprocess(
        "--run-reference", _prepare_args(files, vocab_file, record_file, seed), log
    )


def _flag_values(args: Sequence[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args)


def _ours_main(args: Sequence[str]) -> None:
    """Our ``run_prepare`` with the reference's flags, in this (fresh) process."""
    from bert_trainer.config import PrepareConfig
    from bert_trainer.prepare.run import run_prepare

    values = _flag_values(args)
    # absl's boolean flags take true/false in any case; so do we.
    output = Path(values["output_file"])
    config = PrepareConfig(
        corpus=values["input_file"].split(","),
        vocab=values["vocab_file"],
        lowercase=values["do_lower_case"].lower() == "true",
        max_seq_length=int(values["max_seq_length"]),
        max_predictions_per_seq=int(values["max_predictions_per_seq"]),
        masked_lm_prob=float(values["masked_lm_prob"]),
        dupe_factor=int(values["dupe_factor"]),
        short_seq_prob=float(values["short_seq_prob"]),
        seed=int(values["random_seed"]),
        output_vocab=str(output / "vocab.txt"),
        output_tfrecords=str(output / "tfrecords"),
    )
    cpu = _cpu_seconds()
    started = time.perf_counter()
    result = run_prepare(config)
    seconds = time.perf_counter() - started
    print(json.dumps(asdict(Timing(result.instances, seconds, _cpu_seconds() - cpu))))


def _reference_main(args: Sequence[str]) -> None:
    """google-research/bert's create_pretraining_data.main in this (fresh) process.

    bert-tensorflow 1.0.4 (the last release on PyPI) already does
    ``import tensorflow.compat.v1 as tf`` and defines its flags through
    ``tf.flags`` (absl), so it imports unmodified under TensorFlow 2.21 and
    nothing needs aliasing: parse the flags into absl's FLAGS, then call
    ``main`` as ``tf.app.run`` would.
    """
    from absl import flags

    try:
        from bert import create_pretraining_data as reference
    except ImportError as e:
        raise SystemExit(
            "the reference is the PyPI package bert-tensorflow: "
            "uv pip install -p .venv bert-tensorflow"
        ) from e

    flags.FLAGS(["create_pretraining_data.py", *args])
    cpu = _cpu_seconds()
    started = time.perf_counter()
    reference.main(None)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu
    output = flags.FLAGS.output_file
    instances = sum(1 for _ in reference.tf.python_io.tf_record_iterator(output))
    print(json.dumps(asdict(Timing(instances, seconds, cpu))))


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Statistics:
    instances: int
    instances_per_document: float
    tokens_per_instance: float
    full_length_fraction: float
    """Instances with all max_seq_length positions used."""
    masked_per_token: float
    """Masked-LM predictions over non-padding tokens ([CLS]/[SEP] included, as Google counts)."""
    masked_per_instance: float
    mask_token_fraction: float
    """Predictions whose input token is [MASK] (80 % by the recipe)."""
    kept_fraction: float
    """Predictions whose input token is the original one (10 %)."""
    random_next_fraction: float
    """Next-sentence label 1 (B is from another document)."""


def record_statistics(pattern: str, documents: int, mask_id: int) -> Statistics:
    import numpy as np
    import tensorflow as tf

    from bert_trainer.train.data import RecordShape, feature_spec

    spec = feature_spec(
        RecordShape(int(FLAGS["max_seq_length"]), int(FLAGS["max_predictions_per_seq"]))
    )
    files = tf.io.gfile.glob(pattern)
    dataset = tf.data.TFRecordDataset(files).batch(4096).map(lambda r: tf.io.parse_example(r, spec))
    sums = np.zeros(8, dtype=np.float64)
    for batch in dataset:
        ids = batch["input_ids"].numpy()
        mask = batch["input_mask"].numpy()
        positions = batch["masked_lm_positions"].numpy()
        labels = batch["masked_lm_ids"].numpy()
        weights = batch["masked_lm_weights"].numpy() > 0
        at = np.take_along_axis(ids, positions, axis=1)
        lengths = mask.sum(axis=1)
        sums += (
            len(ids),
            lengths.sum(),
            (lengths == ids.shape[1]).sum(),
            weights.sum(),
            (weights & (at == mask_id)).sum(),
            (weights & (at == labels)).sum(),
            batch["next_sentence_labels"].numpy().sum(),
            0,
        )
    n, tokens, full, masked, as_mask, kept, random_next, _ = sums.tolist()
    return Statistics(
        instances=int(n),
        instances_per_document=n / documents,
        tokens_per_instance=tokens / n,
        full_length_fraction=full / n,
        masked_per_token=masked / tokens,
        masked_per_instance=masked / n,
        mask_token_fraction=as_mask / masked,
        kept_fraction=kept / masked,
        random_next_fraction=random_next / n,
    )


# --------------------------------------------------------------------------- report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-files",
        type=int,
        default=REFERENCE_FILES,
        help=f"corpus files (of {PARTS}) the reference runs on (default {REFERENCE_FILES})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"alternating timed runs of each program; the best are compared (default {REPEATS})",
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--run-ours", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("prepare_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_ours:
        _ours_main(args.prepare_args)
        return
    if args.run_reference:
        _reference_main(args.prepare_args)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow reads the records
    print(f"machine: {machine()}", flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        ratio = _benchmark(work, args.reference_files, args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"RATIO prepare_vs_reference {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x)", flush=True)


def _benchmark(work: Path, reference_files: int, repeats: int) -> float:
    started = time.perf_counter()
    corpus = generate_corpus(work / "corpus")
    print(
        f"corpus: {corpus.bytes / 2**20:.1f} MiB, {corpus.documents} documents, "
        f"{corpus.sentences} sentences in {len(corpus.files)} files "
        f"(generated in {time.perf_counter() - started:.1f}s)",
        flush=True,
    )
    vocab_file = work / "vocab.txt"
    started = time.perf_counter()
    vocab_size = train_shared_vocab(corpus.files, vocab_file)
    print(f"vocab: {vocab_size} tokens (trained in {time.perf_counter() - started:.1f}s)")
    subset = corpus.files[:reference_files]
    subset_documents = count_documents(subset)
    subset_bytes = sum(Path(f).stat().st_size for f in subset)
    print(
        f"reference subset: the first {len(subset)} files, {subset_bytes / 2**20:.2f} MiB, "
        f"{subset_documents} documents",
        flush=True,
    )

    # Our compiled kernels are compiled once into numba's cache, as the trainer image's
    # build does; every timed run then loads them from it (inside its timed part).
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "from bert_trainer.prepare import kernels; kernels.load()"],
        check=True,
    )
    print(f"kernels: compiled or loaded into the cache in {time.perf_counter() - started:.1f}s")

    log = work / "runs.log"
    runs: dict[str, list[Timing]] = {"ours, full corpus": [], "reference": [], "ours, subset": []}
    outputs: dict[str, list[str]] = {"ours": [], "reference": []}
    for i in range(repeats):
        # Alternating keeps a change in the machine's load from favouring one side;
        # a new seed per repeat shows how much the statistics move by chance alone.
        seed = SEED + i
        timing = run_ours(corpus.files, vocab_file, work / "ours-full", seed, log)
        _print_timing(f"ours, full corpus, seed {seed}", timing)
        runs["ours, full corpus"].append(timing)
        timing = run_reference(subset, vocab_file, work / f"reference-{i}", seed, log)
        _print_timing(f"reference, subset, seed {seed}", timing)
        runs["reference"].append(timing)
        outputs["reference"].append(str(work / f"reference-{i}" / "reference.tfrecord"))
        timing = run_ours(subset, vocab_file, work / f"ours-subset-{i}", seed, log)
        _print_timing(f"ours, subset, seed {seed}", timing)
        runs["ours, subset"].append(timing)
        outputs["ours"].append(str(work / f"ours-subset-{i}" / "tfrecords" / "*.tfrecord"))

    mask_id = vocab_file.read_text(encoding="utf-8").splitlines().index("[MASK]")
    _print_statistics(
        {
            side: [record_statistics(pattern, subset_documents, mask_id) for pattern in patterns]
            for side, patterns in outputs.items()
        }
    )

    # Other work on a shared machine only ever slows a run down, so each side's
    # fastest run is its best estimate; medians are printed as well.
    best = {label: max(t.per_second for t in timings) for label, timings in runs.items()}
    middle = {label: median(t.per_second for t in timings) for label, timings in runs.items()}
    per_cpu = {label: max(t.per_cpu_second for t in timings) for label, timings in runs.items()}
    print(f"instances/s, best (median) of {repeats} runs; instances per CPU-second, best:")
    for label in runs:
        print(
            f"  {label:<20} {best[label]:>9,.0f}/s ({middle[label]:>9,.0f}/s); "
            f"{per_cpu[label]:>8,.0f}/CPU-s"
        )
    reference = best["reference"]
    print(
        f"ratios to the reference (best runs): full corpus "
        f"{best['ours, full corpus'] / reference:.1f}x, same subset "
        f"{best['ours, subset'] / reference:.1f}x, per CPU-second "
        f"{per_cpu['ours, full corpus'] / per_cpu['reference']:.1f}x; medians: full corpus "
        f"{middle['ours, full corpus'] / middle['reference']:.1f}x"
    )
    return best["ours, full corpus"] / reference


def _print_timing(label: str, timing: Timing) -> None:
    print(
        f"{label:<20} {timing.instances:>9,} instances in {timing.seconds:7.1f}s "
        f"= {timing.per_second:>9,.0f}/s; {timing.cpu_seconds:6.1f} CPU-s "
        f"= {timing.per_cpu_second:>8,.0f}/CPU-s",
        flush=True,
    )


def _print_statistics(sides: dict[str, list[Statistics]]) -> None:
    """Each statistic's mean over the seeds, and its range, side by side."""
    print(f"statistics of the subset's records, mean [min, max] over {len(sides['ours'])} seeds:")
    print(f"  {'':<24}" + "".join(f"{side:>30}" for side in sides))
    for name in Statistics.__dataclass_fields__:
        cells = []
        for values in sides.values():
            column = [float(getattr(s, name)) for s in values]
            digits = 0 if name == "instances" else 3
            cells.append(
                f"{mean(column):.{digits}f} [{min(column):.{digits}f}, {max(column):.{digits}f}]"
            )
        print(f"  {name:<24}" + "".join(f"{cell:>30}" for cell in cells))


if __name__ == "__main__":
    main()
