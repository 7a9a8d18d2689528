"""Paths that are either local or ``gs://bucket/object``: the trainer's only I/O layer.

Every stage reads its inputs and writes its outputs through these helpers, so
the same code runs against GCS in a pod and against the local filesystem (or a
GCS emulator named by ``STORAGE_EMULATOR_HOST``) in tests. A missing input
raises :class:`InputError`, which the CLI turns into ``contract.EXIT_BAD_INPUT``:
retrying cannot conjure a file the user forgot to upload.
"""

from __future__ import annotations

import contextlib
import glob as _local_glob
import os
import posixpath
import re
import shutil
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from bert_trainer import contract

GCS_SCHEME = "gs://"


class InputError(Exception):
    """The user's input is missing or invalid; retrying the attempt cannot help."""


DEFAULT_RETRY_BUDGET_SECONDS = 600.0
"""Ten minutes: longer than most GCS incidents' error bursts, short enough that a
slice does not idle for long when storage is really gone."""


def retry_budget_seconds(env: Mapping[str, str] | None = None) -> float:
    """The storage retry budget from ``$BERT_TRAINER_STORAGE_RETRY_SECONDS``; InputError if invalid.

    Here, not in ``bert_trainer.retry``, because that module imports TensorFlow and a
    prepare worker reads storage without it.
    """
    raw = (os.environ if env is None else env).get(contract.ENV_STORAGE_RETRY_SECONDS)
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_BUDGET_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise InputError(
            f"{contract.ENV_STORAGE_RETRY_SECONDS}={raw!r} is not a number of seconds >= 0"
        )
    return value


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join path segments with ``/`` for gs:// URIs and the OS separator otherwise."""
    if is_gcs(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def glob(pattern: str) -> list[str]:
    """Sorted paths matching ``pattern``.

    ``*``, ``?`` and ``[...]`` match within one path segment; a ``**`` segment
    matches any number of directories (``a/**/*.txt``), as Python's recursive
    glob does, for local paths and gs:// alike.
    """
    if not is_gcs(pattern):
        return sorted(p for p in _local_glob.glob(pattern, recursive=True) if os.path.isfile(p))
    bucket_name, object_pattern = _split(pattern)
    literal_prefix = re.split(r"[*?\[]", object_pattern, maxsplit=1)[0]
    regex = _glob_regex(object_pattern)
    blobs = _client().list_blobs(bucket_name, prefix=literal_prefix)
    return sorted(
        f"{GCS_SCHEME}{bucket_name}/{blob.name}"
        for blob in blobs
        if regex.fullmatch(blob.name) and not blob.name.endswith("/")
    )


def exists(path: str) -> bool:
    if not is_gcs(path):
        return os.path.exists(path)
    return bool(_blob(path).exists())


def read_bytes(path: str) -> bytes:
    if not is_gcs(path):
        try:
            return Path(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise InputError(f"{path} does not exist") from e
    from google.api_core.exceptions import NotFound

    try:
        data: bytes = _blob(path).download_as_bytes()
    except NotFound as e:
        raise InputError(f"{path} does not exist") from e
    return data


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text: {e}") from e


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` whole: readers never see a partial local file."""
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    tmp = _local_tmp_for(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload_file(local_path: str, path: str) -> None:
    """Copy a local file to ``path`` (an object upload for gs://)."""
    if is_gcs(path):
        _blob(path).upload_from_filename(local_path)
        return
    tmp = _local_tmp_for(path)
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, path)


def download_file(path: str, local_path: str) -> None:
    """Copy ``path`` (local or gs://) to a local file."""
    if not is_gcs(path):
        try:
            shutil.copyfile(path, local_path)
        except FileNotFoundError as e:
            raise InputError(f"{path} does not exist") from e
        return
    from google.api_core.exceptions import NotFound

    try:
        _blob(path).download_to_filename(local_path)
    except NotFound as e:
        raise InputError(f"{path} does not exist") from e


def delete(path: str) -> None:
    """Remove ``path`` if it exists (intermediates a finished pass no longer needs)."""
    if not is_gcs(path):
        Path(path).unlink(missing_ok=True)
        return
    from google.api_core.exceptions import NotFound

    with contextlib.suppress(NotFound):
        _blob(path).delete()


def _local_tmp_for(path: str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise InputError(f"{uri} names no bucket")
    return bucket, name


def _blob(uri: str) -> Any:
    bucket, name = _split(uri)
    if not name:
        raise InputError(f"{uri} names no object")
    return _client().bucket(bucket).blob(name)


def _client() -> Any:
    # One client per process (HTTP sessions must not cross a fork) and per emulator.
    return _cached_client(os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))


@cache
def _cached_client(pid: int, emulator: str | None) -> Any:
    from google.cloud import storage

    return storage.Client()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        at_segment_start = i == 0 or pattern[i - 1] == "/"
        if pattern.startswith("**/", i) and at_segment_start:
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i) and at_segment_start and i + 2 == len(pattern):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))
