"""JSONL manifests: one utterance per line, so evaluation sets stream and a bad line names itself.

Line format::

    {"id": str, "audio": path, "text": reference, "duration": float, "entities": [str],
     "prompt": str, "terms": path | [str], "voice": str, "augmentation": str, ...}

Only ``audio`` and ``text`` are required; ``id`` defaults to the audio file's stem. Relative audio
paths (and a ``terms`` path) are resolved against the manifest's folder so a data folder can move.
Keys this module does not know are kept in ``Utterance.extra`` and written back unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.errors import ManifestError

_KNOWN = ("id", "audio", "text", "duration", "entities", "prompt", "voice", "augmentation")
_OPTIONAL_STR = ("prompt", "voice", "augmentation")


@dataclass
class Utterance:
    """One evaluation utterance; `audio` is absolute after reading."""

    id: str
    audio: str
    text: str
    duration: float | None = None
    entities: list[str] = field(default_factory=list)
    prompt: str | None = None
    voice: str | None = None
    augmentation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terms(self) -> str | list[str] | None:
        """The domain term list (a resolved path or an inline list), if the manifest gave one."""
        return self.extra.get("terms")

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """The JSON object for one line; paths under `base` are written relative to it."""
        d: dict[str, Any] = {"id": self.id, "audio": _relative(self.audio, base), "text": self.text}
        if self.duration is not None:
            d["duration"] = round(float(self.duration), 3)
        if self.entities:
            d["entities"] = list(self.entities)
        for key in _OPTIONAL_STR:
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        for key, value in self.extra.items():
            if key == "terms" and isinstance(value, str):
                value = _relative(value, base)
            d[key] = value
        return d


def _relative(path: str, base: Path | None) -> str:
    if base is None:
        return path
    p = Path(path).expanduser().resolve()  # a relative path in memory is relative to the CWD
    try:
        return p.relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(p)


def _resolve(value: str, folder: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p))


def _parse(obj: Any, folder: Path) -> Utterance:
    """Validate one decoded line; raises ValueError with the problem."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("audio", "text"):
        if key not in obj:
            raise ValueError(f"missing required key {key!r}")
        if not isinstance(obj[key], str):
            raise ValueError(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    if not obj["audio"].strip():
        raise ValueError("'audio' is empty")
    audio = _resolve(obj["audio"], folder)
    uid = obj.get("id")
    if uid is None:
        uid = Path(obj["audio"]).stem
    elif not isinstance(uid, str) or not uid:
        raise ValueError("'id' must be a non-empty string")
    duration = obj.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
            raise ValueError(f"'duration' must be a non-negative number, got {duration!r}")
        duration = float(duration)
    entities = obj.get("entities") or []
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        raise ValueError("'entities' must be a list of strings")
    for key in _OPTIONAL_STR:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ValueError(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    extra = {k: v for k, v in obj.items() if k not in _KNOWN}
    terms = extra.get("terms")
    if terms is not None:
        if isinstance(terms, str):
            extra["terms"] = _resolve(terms, folder)
        elif not (isinstance(terms, list) and all(isinstance(t, str) for t in terms)):
            raise ValueError("'terms' must be a path or a list of strings")
    return Utterance(
        id=uid,
        audio=audio,
        text=obj["text"],
        duration=duration,
        entities=list(entities),
        prompt=obj.get("prompt"),
        voice=obj.get("voice"),
        augmentation=obj.get("augmentation"),
        extra=extra,
    )


def read_manifest(
    path: str | os.PathLike[str], *, on_error: Callable[[ManifestError], None] | None = None
) -> Iterator[Utterance]:
    """Stream the utterances of a manifest, lazily, so large sets never sit in memory.

    A bad line raises ManifestError (with its 1-based line number) unless `on_error` is given:
    then the error is passed to it and the line is skipped, so a batch can report and go on.
    """
    p = Path(path)
    folder = p.resolve().parent
    try:
        fh = open(p, encoding="utf-8")
    except OSError as e:
        raise ManifestError(str(p), 0, f"cannot open: {e.strerror or e}") from e
    with fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as e:
                # The rest of the file cannot be located line by line; report and stop.
                err = ManifestError(str(p), lineno + 1, f"not UTF-8 text: {e.reason}")
                if on_error is None:
                    raise err from e
                on_error(err)
                return
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                err = ManifestError(str(p), lineno, f"invalid JSON: {e.msg} (column {e.colno})")
                if on_error is None:
                    raise err from e
                on_error(err)
                continue
            try:
                utt = _parse(obj, folder)
            except ValueError as e:
                err = ManifestError(str(p), lineno, str(e))
                if on_error is None:
                    raise err from e
                on_error(err)
                continue
            yield utt


def write_manifest(utts: Iterable[Utterance], path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically (temp file + os.replace): readers never see half a file.

    Audio and term-list paths inside the manifest's folder are written relative to it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    base = p.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for utt in utts:
                fh.write(json.dumps(utt.to_dict(base), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p
