"""Benchmark 4: peak memory of one ``prepare`` worker on a small and on a large corpus.

    .venv/bin/python benchmarks/prepare_memory.py [--sizes-mib 100 1024] [--chunk-mib 32]

What it does, in one run on one machine:

1. Generates each corpus deterministically (seeded RNG) from the bundled CC0
   corpus (``devstack/bpj_devstack/data/corpus.txt``): documents of 2 to 48
   sentences drawn from it, in each of which one word is swapped for a
   Zipf-distributed pseudo-word of a 100,000-word lexicon (so the vocab and
   the word table grow with the corpus as real text's do). It is written as
   files of ``--file-mib`` (64 MiB) of whole documents; files larger than a
   chunk are split by byte ranges.
2. Runs the passes on each (``run_pass``: plan, count, vocab, records,
   shards), each in a fresh process as each pass' pod runs it, with one pod:
   a WordPiece vocab trained on the corpus (counting pass, then training),
   then the instance pass, ``--workers`` processes (default: all cores), the
   given ``--chunk-mib``. Flags: max_seq_length 128, max_predictions_per_seq
   20, dupe_factor ``--dupe-factor`` (2), num_shards 8, seed 12345.
3. Samples the memory of the worker's whole process tree every 0.2 s: the sum
   of its processes' PSS (``/proc/<pid>/smaps_rollup``; shared pages are
   split between the processes that share them, so forked pool workers are not
   counted twice), which is what the pod's memory limit has to hold. The
   parent's own peak RSS (VmHWM) and the largest pool process' are printed too.

The peak of a worker (its largest pass) should depend on ``chunk_bytes``, not
on the corpus, so
both corpora must be larger than a chunk. The last line is ``RATIO
prepare_memory <large/small>x (target <= 1.2x)``, from the peak PSS of the
process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from machine import machine  # benchmarks/ is the script's directory

from bert_trainer import contract

REPO = Path(__file__).resolve().parents[1]
SEED_CORPUS = REPO / "devstack" / "bpj_devstack" / "data" / "corpus.txt"
TARGET_RATIO = 1.2
CORPUS_SEED = 20261202
LEXICON_SIZE = 100_000
SAMPLE_SECONDS = 0.2
PASSES = contract.PREPARE_PASSES

_ONSETS = [*"bcdfghjklmnprstvwz", "br", "cr", "dr", "gr", "pl", "st", "tr", "ch", "sh", "th"]
_VOWELS = [*"aeiou", "ai", "ea", "ou", "io"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "nd", "st", "rk"]


@dataclass(frozen=True)
class CorpusInfo:
    files: list[str]
    documents: int
    bytes: int


def generate_corpus(directory: Path, target_bytes: int, file_bytes: int) -> CorpusInfo:
    """Files of at most ``file_bytes`` of whole documents, about ``target_bytes`` in all.

    At most, so that a file of ``k`` chunks' bytes splits into ``k`` chunks of nearly
    ``chunk_bytes`` each: just over would split it into ``k + 1`` smaller ones, and the
    corpora would be compared at different chunk sizes.
    """
    rng = random.Random(CORPUS_SEED)
    sentences = [line.strip() for line in SEED_CORPUS.read_text().splitlines() if line.strip()]
    words = [s.split(" ") for s in sentences]
    lexicon: dict[str, None] = {}
    while len(lexicon) < LEXICON_SIZE:
        syllables = rng.choice((1, 2, 2, 3, 3, 4))
        lexicon.setdefault(
            "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                for _ in range(syllables)
            ),
            None,
        )
    pseudo = list(lexicon)
    cumulative: list[float] = []
    total = 0.0
    for rank in range(len(pseudo)):
        total += 1.0 / (rank + 2.7) ** 1.05
        cumulative.append(total)

    directory.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    documents = written = 0
    while written < target_bytes:
        path = directory / f"part-{len(files):04d}.txt"
        size = 0
        with path.open("w", encoding="utf-8") as out:
            while written + size < target_bytes:
                length = rng.randint(2, 48)
                picks = rng.choices(range(len(sentences)), k=length)
                swaps = rng.choices(pseudo, cum_weights=cumulative, k=length)
                lines = []
                for pick, swap in zip(picks, swaps, strict=True):
                    line = list(words[pick])
                    line[rng.randrange(len(line))] = swap
                    lines.append(" ".join(line))
                text = "\n".join(lines) + "\n\n"
                if size + len(text.encode()) > file_bytes:
                    break
                out.write(text)
                size += len(text.encode())
                documents += 1
        written += size
        files.append(str(path))
    return CorpusInfo(files=files, documents=documents, bytes=written)


# --------------------------------------------------------------------------- one worker


@dataclass(frozen=True)
class Run:
    instances: int
    documents: int
    seconds: float
    parent_peak_rss: int
    """VmHWM of the worker's main process, bytes."""
    child_peak_rss: int
    """The largest peak RSS of its pool processes, bytes."""


def _worker_main(args: Sequence[str]) -> None:
    """One pass (``run_pass``, index 0 of 1 pod), or ``all`` (``run_prepare``), in this
    (fresh) process, as one pod runs it; prints a ``Run`` as JSON."""
    from bert_trainer.config import PrepareConfig

    config = PrepareConfig.model_validate_json(args[0])
    started = time.perf_counter()
    if args[1] == "all":
        from bert_trainer.prepare.run import run_prepare

        result = run_prepare(config)
        instances, documents = result.instances, result.documents
    else:
        from bert_trainer.prepare.passes import run_pass

        report = run_pass(config, args[1], 0, 1)
        instances, documents = report.get("instances", 0), 0
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(asdict(Run(instances, documents, seconds, _vm_hwm(os.getpid()), children))))


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return pids


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_worker(
    config_json: str, log: Path, tree: Path | None = None, prepare_pass: str = "all"
) -> tuple[Run, int]:
    """One worker (a pass, or ``all``) in a subprocess: its Run, and the peak PSS of its tree.

    ``tree``: another ``trainer_image`` directory to import ``bert_trainer`` from.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with log.open("a") as err:
        process = subprocess.Popen(
            [sys.executable, __file__, "--run-worker", "--", config_json, prepare_pass],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, sum(_pss(p) for p in _tree(process.pid)))
                time.sleep(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = process.communicate()
        done.set()
        sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"the worker failed (exit {process.returncode}); see {log}")
    return Run(**json.loads(out.strip().splitlines()[-1])), peak


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[100, 1024])
    parser.add_argument("--chunk-mib", type=int, default=32, help="chunk_bytes, MiB (32)")
    parser.add_argument("--file-mib", type=int, default=64, help="corpus file size, MiB (64)")
    parser.add_argument("--dupe-factor", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run, on the first size only, the bert_trainer of this trainer_image "
        "directory (e.g. `git archive` of an older commit), without chunk_bytes",
    )
    parser.add_argument("--run-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_worker:
        _worker_main(args.worker_args)
        return

    print(f"machine: {machine()}", flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-prepare-memory-"))
    peaks: list[int] = []
    try:
        for size_mib in args.sizes_mib:
            corpus_dir = work / f"corpus-{size_mib}"
            started = time.perf_counter()
            corpus = generate_corpus(corpus_dir, size_mib << 20, args.file_mib << 20)
            print(
                f"corpus {size_mib} MiB: {corpus.bytes / 2**20:.1f} MiB, {corpus.documents:,} "
                f"documents in {len(corpus.files)} files "
                f"(generated in {time.perf_counter() - started:.0f}s)",
                flush=True,
            )
            out = work / f"out-{size_mib}"
            config = {
                "corpus": [str(corpus_dir / "*.txt")],
                "vocab_size": 30522,
                "max_seq_length": 128,
                "max_predictions_per_seq": 20,
                "dupe_factor": args.dupe_factor,
                "num_shards": 8,
                "seed": 12345,
                "workers": args.workers,
                "chunk_bytes": args.chunk_mib << 20,
                "output_vocab": str(out / "vocab.txt"),
                "output_tfrecords": str(out / "tfrecords"),
            }
            if args.baseline_tree is not None and size_mib == args.sizes_mib[0]:
                baseline = {k: v for k, v in config.items() if k != "chunk_bytes"}
                load = os.getloadavg()[0]
                run, peak = run_worker(json.dumps(baseline), work / "runs.log", args.baseline_tree)
                _print_run(f"baseline ({args.baseline_tree})", size_mib, run, peak, load)
                shutil.rmtree(out, ignore_errors=True)
            # Each pass in its own process, as each pass' pod runs it: the peak of a
            # worker is the largest pass peak.
            config["work_dir"] = str(out / "prepare")
            pass_peaks = {}
            seconds = 0.0
            load = os.getloadavg()[0]
            for prepare_pass in PASSES:
                run, pass_peaks[prepare_pass] = run_worker(
                    json.dumps(config), work / "runs.log", prepare_pass=prepare_pass
                )
                seconds += run.seconds
            plan = json.loads((out / "prepare" / "plan.json").read_text())
            # A chunk is a list of [file, start, end] pieces (prepare/plan.py).
            largest = max(sum(end - start for _, start, end in c) for c in plan["chunks"])
            peak = max(pass_peaks.values())
            peaks.append(peak)
            print(
                f"  chunk {args.chunk_mib} MiB, {size_mib} MiB: {run.instances:,} instances in "
                f"{seconds:.0f}s (load average {load:.2f} at start); peak PSS of the process "
                f"tree {peak / 2**20:,.0f} MiB; {len(plan['chunks'])} chunks, the largest "
                f"{largest / 2**20:.1f} MiB; per pass: "
                + ", ".join(f"{p} {v / 2**20:,.0f}" for p, v in pass_peaks.items())
                + " MiB",
                flush=True,
            )
            shutil.rmtree(corpus_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    ratio = peaks[-1] / peaks[0]
    print(
        f"RATIO prepare_memory {ratio:.2f}x ({args.sizes_mib[-1]} MiB over "
        f"{args.sizes_mib[0]} MiB, chunk {args.chunk_mib} MiB) (target <= {TARGET_RATIO}x)",
        flush=True,
    )


def _print_run(label: str, size_mib: int, run: Run, peak: int, load: float) -> None:
    print(
        f"  {label}, {size_mib} MiB: {run.instances:,} instances from {run.documents:,} "
        f"documents in {run.seconds:.0f}s (load average {load:.2f} at start); peak PSS of the "
        f"process tree {peak / 2**20:,.0f} MiB; peak RSS main process "
        f"{run.parent_peak_rss / 2**20:,.0f} MiB, largest pool process "
        f"{run.child_peak_rss / 2**20:,.0f} MiB",
        flush=True,
    )


if __name__ == "__main__":
    main()
