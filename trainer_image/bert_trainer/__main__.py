"""``python -m bert_trainer COMMAND [--config PATH]``: the trainer pod's entry point.

COMMAND is check, prepare, train or export. Loads the ``TrainerConfig`` JSON
(``--config``, else ``$BERT_TRAINER_CONFIG``, else ``contract.CONFIG_PATH``),
runs the command's stage, and turns failures into the exit codes of
``contract``: bad input (a missing corpus, an invalid config, a TPU slice whose
pod sees no TPU: ``train/device.py``) exits with ``EXIT_BAD_INPUT`` so the
operator fails the job at once; anything else exits with
``EXIT_INFRASTRUCTURE`` so it retries. Either way one line saying why goes to
the termination message file and to the log. A stage may also end with its own
exit code by raising ``SystemExit`` (train's ``Preempted`` exits with
``EXIT_PREEMPTED``); its message is written the same way. ``check`` succeeds
with its findings (``CheckReport`` JSON) as the termination message.

Logs are JSON lines on stderr, each naming the job when the config has one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from bert_trainer import contract, storage
from bert_trainer.config import TrainerConfig
from bert_trainer.storage import InputError
from bert_trainer.supervise import supervise
from bert_trainer.train.cluster import SliceHosts, choose_runtime
from bert_trainer.train.device import Device, DeviceProbe, train_device

log = logging.getLogger("bert_trainer")

COMMANDS = ("check", "prepare", "train", "export")
_T = TypeVar("_T")

# Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job, and any ``extra`` fields."""

    def __init__(self, job: dict[str, str] | None = None) -> None:
        super().__init__()
        self._job = job or {}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self._job,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_FIELDS:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def main(argv: Sequence[str] | None = None, *, probe: DeviceProbe | None = None) -> int:
    """Run one command; ``probe`` replaces the look for TPU chips (tests)."""
    args = _parse_args(argv)
    _configure_logging(None)
    device: Device = "cpu"
    if args.command == "train":
        # Before the config and any framework: a TPU slice without a TPU fails at once.
        try:
            hosts = SliceHosts.from_environ()
            device = train_device(os.environ, probe)
            runtime = choose_runtime(hosts, device=device)
        except InputError as e:
            return _fail(contract.EXIT_BAD_INPUT, f"train: {_one_line(e)}")
        if runtime == "jax":
            # Keras reads its backend once, on first import. On a TPU, JAX must not fall
            # back to CPU when it cannot open the chips (held by another process): it
            # raises, and the attempt ends as an infrastructure failure.
            os.environ["KERAS_BACKEND"] = "jax"
            os.environ.setdefault("JAX_PLATFORMS", device)
        if not os.environ.get(contract.ENV_SUPERVISED):
            log.info("train on %s with the %s runtime, %d host(s)", device, runtime, hosts.size)
            if runtime == "jax" and hosts.size > 1:
                argv_list = list(sys.argv[1:] if argv is None else argv)
                code, message = supervise(argv_list, hosts.worker_id)
                return _fail(code, message) if message else code
    try:
        config = _load_config(args.config)
    except (InputError, ValidationError, ValueError) as e:
        return _fail(
            contract.EXIT_BAD_INPUT, f"invalid configuration {args.config}: {_one_line(e)}"
        )
    except Exception as e:
        return _fail(contract.EXIT_INFRASTRUCTURE, f"cannot read {args.config}: {_one_line(e)}")

    if config.job is not None:
        _configure_logging({"namespace": config.job.namespace, "job": config.job.name})
    try:
        _command(args.command, device, args.prepare_pass, args.workers)(config)
    except InputError as e:
        return _fail(contract.EXIT_BAD_INPUT, f"{args.command}: {_one_line(e)}")
    except SystemExit as e:
        # A stage's own exit, e.g. train's Preempted (EXIT_PREEMPTED) after a checkpoint.
        if e.code in (None, 0):
            return contract.EXIT_OK
        code = e.code if isinstance(e.code, int) else contract.EXIT_INFRASTRUCTURE
        return _fail(code, f"{args.command}: {_one_line(e)}")
    except Exception as e:
        log.exception("%s failed", args.command)
        masked = _stage_exit_behind(e)
        if masked is not None:
            # Cleaning up after a stage's own exit failed too (e.g. closing the summary
            # writer during the storage outage that ended training): the exit says why.
            return _fail(masked[0], f"{args.command}: {masked[1]}")
        return _fail(contract.EXIT_INFRASTRUCTURE, f"{args.command}: {_one_line(e)}")
    log.info("%s finished", args.command)
    return contract.EXIT_OK


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bert_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "--pass",
        dest="prepare_pass",
        choices=contract.PREPARE_PASSES,
        help=(
            f"prepare: run one pass, as index ${contract.ENV_COMPLETION_INDEX} (0 if unset) of "
            "--workers pods; needs prepare.workDir (default: every pass in this process)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="prepare --pass: the number of pods of the pass (default 1; plan and vocab: 1)",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get(contract.ENV_CONFIG_PATH, contract.CONFIG_PATH),
        help=f"TrainerConfig JSON (default: ${contract.ENV_CONFIG_PATH} or {contract.CONFIG_PATH})",
    )
    return parser.parse_args(argv)


def _load_config(path: str) -> TrainerConfig:
    return TrainerConfig.model_validate_json(storage.read_bytes(path))


def _command(
    name: str, device: Device = "cpu", prepare_pass: str | None = None, workers: int | None = None
) -> Callable[[TrainerConfig], None]:
    def check(config: TrainerConfig) -> None:
        from bert_trainer.check import check_inputs

        report = check_inputs(_section(config.check, "check"))
        log.info("the inputs are readable", extra={"found": report.model_dump(exclude_none=True)})
        _write_termination_message(report.model_dump_json(by_alias=True, exclude_none=True))

    def prepare(config: TrainerConfig) -> None:
        section = _section(config.prepare, "prepare")
        if prepare_pass is None:
            if workers is not None:
                raise InputError("--workers is the pod count of one pass: it needs --pass")
            from bert_trainer.prepare import run_prepare

            run_prepare(section)
            return
        from bert_trainer.prepare.passes import run_pass
        from bert_trainer.prepare.reports import make_reporter

        index = _completion_index()
        run_pass(
            section,
            prepare_pass,
            index,
            1 if workers is None else workers,
            make_reporter(config.job, prepare_pass, index),
        )

    # Sections are checked before the (TensorFlow-heavy) stage modules are imported.
    def train(config: TrainerConfig) -> None:
        if config.train_phases is None:
            _section(config.train, "train")
        hosts = SliceHosts.from_environ()
        if choose_runtime(hosts, device=device) == "jax":
            from bert_trainer.train.multihost import run_multihost

            run_multihost(config, hosts)
            return
        from bert_trainer.train.run import run_train

        run_train(config)

    def export(config: TrainerConfig) -> None:
        _section(config.export, "export")
        from bert_trainer.export.run import run_export

        run_export(config)

    commands: dict[str, Callable[[TrainerConfig], None]] = {
        "check": check,
        "prepare": prepare,
        "train": train,
        "export": export,
    }
    return commands[name]


def _completion_index() -> int:
    """This pod's index in its Indexed Job (``$JOB_COMPLETION_INDEX``), 0 outside one."""
    raw = os.environ.get(contract.ENV_COMPLETION_INDEX, "").strip()
    if not raw:
        return 0
    try:
        index = int(raw)
    except ValueError:
        index = -1
    if index < 0:
        raise InputError(f"${contract.ENV_COMPLETION_INDEX}={raw!r} is not an index")
    return index


def _section(section: _T | None, name: str) -> _T:
    if section is None:
        raise InputError(f"the configuration has no {name!r} section")
    return section


def _stage_exit_behind(error: BaseException) -> tuple[int, str] | None:
    """The code and message of a non-zero SystemExit that ``error`` was raised while handling."""
    seen = 0
    cause = error.__context__
    while cause is not None and seen < 20:
        if isinstance(cause, SystemExit) and cause.code not in (None, 0):
            code = cause.code if isinstance(cause.code, int) else contract.EXIT_INFRASTRUCTURE
            return code, _one_line(cause)
        cause = cause.__context__
        seen += 1
    return None


def _fail(code: int, message: str) -> int:
    log.error(message, extra={"exit_code": code})
    _write_termination_message(message + "\n")
    return code


def _write_termination_message(text: str) -> None:
    path = os.environ.get(contract.ENV_TERMINATION_MESSAGE_PATH, contract.TERMINATION_MESSAGE_PATH)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass  # Outside Kubernetes the default path may not be writable.


def _one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        text = "; ".join(
            ": ".join(filter(None, (".".join(str(p) for p in e["loc"]), e["msg"])))
            for e in error.errors()
        )
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 1000 else text[:997] + "..."


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so reconfiguring replaces it and leaves other handlers (pytest's) alone."""


def _configure_logging(job: dict[str, str] | None) -> None:
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(old)
    handler = _JsonHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(job))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


if __name__ == "__main__":
    exit_code = main()
    if exit_code == contract.EXIT_INFRASTRUCTURE:
        # Every write has finished or failed and the termination message is out. Most
        # often storage stopped answering: the interpreter's teardown would run
        # TensorFlow's destructors, which retry requests to it (input reads in flight,
        # the summary file) for up to minutes. Exit without them.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
