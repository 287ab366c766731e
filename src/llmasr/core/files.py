"""Files llmasr writes and reads: atomic writes (readers never see half a file, an interrupted run loses
nothing written before) and YAML mappings (profiles, recipes) with errors that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from llmasr.core.errors import LlmasrError


@contextmanager
def atomic_write(path: str | os.PathLike[str], *, newline: str | None = None) -> Iterator[IO[str]]:
    """Write text to a temp file beside `path`, then rename it over `path` (mode 0644)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_yaml_mapping(
    path: str | Path, what: str = "profile", error: type[LlmasrError] = LlmasrError
) -> dict[str, Any]:
    """A YAML file that must hold a mapping (profiles, training recipes); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise error(f"{p}: not a valid YAML {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{p}: a {what} is a YAML mapping")
    return data


def read_done(path: Path) -> tuple[set[str], int]:
    """Ids of the records (JSON objects with a string "id") already in an append-only JSONL file; a last
    line cut short by a kill is truncated away, so appending resumes cleanly (N-best corpora, batch
    results). Returns (ids, bytes removed). Complete lines that are not valid records are left in place."""
    done: set[str] = set()
    if not path.exists():
        return done, 0
    with open(path, "rb") as fh:
        data = fh.read()
    good_end = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        line = data[pos : (nl if nl >= 0 else len(data))]
        try:
            obj = json.loads(line) if line.strip() else None
        except ValueError:
            obj = None
        if nl < 0:  # no newline: the last write did not finish (or the record is whole but unterminated)
            if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                done.add(obj["id"])
                good_end = len(data)
                with open(path, "ab") as out:
                    out.write(b"\n")
            break
        if isinstance(obj, dict) and isinstance(obj.get("id"), str):
            done.add(obj["id"])
        good_end = nl + 1
        pos = nl + 1
    removed = len(data) - good_end if good_end < len(data) else 0
    if removed:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done, removed
