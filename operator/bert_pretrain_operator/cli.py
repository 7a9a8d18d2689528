"""The ``bpj`` command: check and inspect BertPretrainJob manifests without a cluster.

- ``bpj validate FILE...``: the admission rules, offline; '-' reads stdin; every
  document of a multi-document file is checked; exit 1 if any is invalid.
- ``bpj crd``: print the CustomResourceDefinition generated from the models.
- ``bpj render FILE``: print, as multi-document YAML, the objects the operator
  would create for the job in FILE.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

import yaml

from bert_pretrain_operator.api.crd import crd_yaml
from bert_pretrain_operator.api.job import API_GROUP, KIND, BertPretrainJob
from bert_pretrain_operator.api.validation import validate_document
from bert_pretrain_operator.render import render_all
from bert_pretrain_operator.render.trainer_config import ResolvedInputs, check_config

EXIT_OK: Final = 0
EXIT_INVALID: Final = 1
"""A document is invalid, or a file could not be read or parsed."""
EXIT_USAGE: Final = 2
"""Bad arguments (argparse's convention), or a command that is not available."""
EXIT_UNAVAILABLE: Final = 3
"""Storage the command needs could not be read (no credentials, unreachable)."""
STDIN: Final = "-"


@dataclass(frozen=True)
class Document:
    """One YAML document of an input file."""

    source: str
    """Where it came from, for messages: ``FILE`` or ``FILE#N`` in a multi-document file."""
    body: Any


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bpj`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    command: int = args.run(args)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpj", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check manifests against the admission rules, offline",
        description="Check BertPretrainJob manifests with the same rules as the API server. "
        "Documents of other kinds are skipped.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML file, or - for stdin")
    validate.set_defaults(run=_validate)

    crd = commands.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(run=_crd)

    render = commands.add_parser(
        "render", help="print the objects the operator would create for a job"
    )
    render.add_argument("file", metavar="FILE", help="YAML file with one BertPretrainJob")
    render.set_defaults(run=_render)
    return parser


def _validate(args: argparse.Namespace) -> int:
    invalid = 0
    for path in args.files:
        try:
            documents = list(_read(path))
        except (OSError, yaml.YAMLError) as error:
            _print(sys.stderr, f"{path}: {error}")
            invalid += 1
            continue
        for document in documents:
            if not _is_ours(document.body):
                _print(sys.stdout, f"{document.source}: skipped ({_describe_kind(document.body)})")
                continue
            problems = validate_document(document.body)
            name = _name(document.body)
            if problems:
                invalid += 1
                _print(sys.stdout, f"{document.source}: {name}: invalid")
                for problem in problems:
                    _print(sys.stdout, f"  {problem}")
            else:
                _print(sys.stdout, f"{document.source}: {name}: valid")
    return EXIT_INVALID if invalid else EXIT_OK


def _crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_yaml())
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    try:
        documents = [d for d in _read(args.file) if d.body is not None]
    except (OSError, yaml.YAMLError) as error:
        _print(sys.stderr, f"{args.file}: {error}")
        return EXIT_INVALID
    jobs = [d for d in documents if _is_ours(d.body)]
    if len(jobs) != 1:
        _print(sys.stderr, f"{args.file}: expected one {KIND}, found {len(jobs)}")
        return EXIT_INVALID
    problems = validate_document(jobs[0].body)
    if problems:
        _print(sys.stderr, f"{jobs[0].source}: invalid")
        for problem in problems:
            _print(sys.stderr, f"  {problem}")
        return EXIT_INVALID
    job = BertPretrainJob.from_manifest(jobs[0].body)
    resolved = ResolvedInputs()
    model = job.spec.model
    if model.starts_from:
        field = model.starts_from_field
        # The dimensions live in the checkpoint's bert_config.json: read as the job's
        # check reads it, but with the user's own credentials.
        try:
            from google.api_core.exceptions import GoogleAPIError
            from google.auth.exceptions import GoogleAuthError

            from bert_trainer.check import check_starting_weights
            from bert_trainer.storage import InputError
        except ImportError as error:
            _print(
                sys.stderr,
                f"{jobs[0].source}: rendering a job with spec.model.{field} reads its "
                f"bert_config.json from GCS, which needs {error.name}: "
                "pip install 'bert-pretrain-operator[gcs]'",
            )
            return EXIT_UNAVAILABLE
        try:
            report = check_starting_weights(check_config(job))
        except InputError as error:
            _print(sys.stderr, f"{jobs[0].source}: {error}")
            return EXIT_INVALID
        except (GoogleAuthError, GoogleAPIError, OSError) as error:
            first_line = (str(error).splitlines() or [type(error).__name__])[0]
            _print(
                sys.stderr,
                f"{jobs[0].source}: cannot read spec.model.{field}'s bert_config.json, "
                f"which sizes the model: {first_line} (bpj render reads GCS with Application "
                "Default Credentials, or the emulator named by STORAGE_EMULATOR_HOST)",
            )
            return EXIT_UNAVAILABLE
        assert report is not None, "the model starts from weights"
        resolved = ResolvedInputs.from_report(report)
    objects: Iterable[Any] = render_all(job, resolved=resolved)
    sys.stdout.write(yaml.safe_dump_all(list(objects), sort_keys=False))
    return EXIT_OK


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats (``1e-4``), as kubectl reads them.

    YAML 1.1 wants a dot in a float, so PyYAML reads ``learningRate: 1e-4`` as a
    string and offline validation would reject what the API server accepts.
    """


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$"
        r"|^\.(nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def load_yaml_documents(text: str) -> Iterator[Any]:
    """Every YAML document in ``text``, numbers read as kubectl reads them."""
    return iter(yaml.load_all(text, Loader=_Yaml12Loader))


def _read(path: str) -> Iterator[Document]:
    if path == STDIN:
        text, label = sys.stdin.read(), "<stdin>"
    else:
        with open(path, encoding="utf-8") as handle:
            text, label = handle.read(), path
    bodies = [body for body in load_yaml_documents(text) if body is not None]
    for index, body in enumerate(bodies, start=1):
        yield Document(label if len(bodies) == 1 else f"{label}#{index}", body)


def _is_ours(body: Any) -> bool:
    """A BertPretrainJob of any version (a wrong version is reported, not skipped)."""
    if not isinstance(body, dict):
        return True  # not a Kubernetes object at all: let validation say so
    group = str(body.get("apiVersion", "")).partition("/")[0]
    return body.get("kind") == KIND or group == API_GROUP


def _describe_kind(body: dict[str, Any]) -> str:
    return f"{body.get('apiVersion', '?')} {body.get('kind', '?')}"


def _name(body: Any) -> str:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if isinstance(metadata, dict):
        return str(metadata.get("name") or metadata.get("generateName") or "<unnamed>")
    return "<unnamed>"


def _print(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
