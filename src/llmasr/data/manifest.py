"""JSONL manifests: one utterance per line, so evaluation sets stream and a bad line names itself.

Line format::

    {"id": str, "audio": path, "text": reference, "duration": float, "entities": [str],
     "prompt": str, "terms": path | [str], "voice": str, "augmentation": str, ...}

Only ``audio`` and ``text`` are required; ``id`` defaults to the audio file's stem. Relative audio
paths (and a ``terms`` path) are resolved against the manifest's folder so a data folder can move.
Keys this module does not know are kept in ``Utterance.extra`` and written back unchanged.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.core.errors import ManifestError
from llmasr.core.files import atomic_write
from llmasr.core.text import read_terms

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
    with atomic_write(p) as fh:
        for utt in utts:
            fh.write(json.dumps(utt.to_dict(base), ensure_ascii=False) + "\n")
    return p


# ---------------------------------------------------------------------------------------------
# Selection and batching for training: filter by duration, deterministic shuffles, buckets.
# ---------------------------------------------------------------------------------------------


def duration_of(utt: Utterance) -> float:
    """The manifest's duration, else the audio header's (soundfile), without decoding the audio."""
    if utt.duration is not None:
        return float(utt.duration)
    import soundfile as sf

    try:
        info = sf.info(utt.audio)
    except Exception as e:
        raise ManifestError(
            utt.audio, 0, f"utterance {utt.id!r}: no duration and unreadable audio ({e})"
        ) from e
    return info.frames / info.samplerate


def with_durations(utts: Iterable[Utterance]) -> list[Utterance]:
    """Copies of the utterances with `duration` filled in (from the audio header where missing)."""
    from dataclasses import replace

    return [u if u.duration is not None else replace(u, duration=duration_of(u)) for u in utts]


def filter_duration(
    utts: Iterable[Utterance], min_s: float = 0.0, max_s: float = float("inf")
) -> list[Utterance]:
    """The utterances with min_s <= duration <= max_s (durations filled in from headers if missing)."""
    return [u for u in with_durations(utts) if min_s <= float(u.duration or 0.0) <= max_s]


def shuffled(utts: Iterable[Utterance], seed: int) -> list[Utterance]:
    """A new list in a seeded random order: the same seed gives the same order on every machine."""
    import random

    out = list(utts)
    random.Random(f"shuffle:{seed}").shuffle(out)
    return out


def bucket_by_duration(
    utts: Iterable[Utterance],
    batch_seconds: float,
    *,
    num_buckets: int = 10,
    seed: int = 0,
    drop_oversize: bool = False,
) -> Iterator[list[Utterance]]:
    """Batches of similar-length utterances, each with total duration <= `batch_seconds`.

    Similar lengths waste little padding. Utterances are sorted by duration and cut into
    `num_buckets` equal-count buckets; each bucket is shuffled with `seed` and packed greedily;
    then the order of all batches is shuffled with `seed` (pass seed + epoch for a new epoch).
    An utterance longer than `batch_seconds` raises ValueError unless `drop_oversize`.
    """
    import random

    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, got {batch_seconds}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
    items = sorted(with_durations(utts), key=lambda u: (float(u.duration or 0.0), u.id))
    over = [u for u in items if float(u.duration or 0.0) > batch_seconds]
    if over and not drop_oversize:
        raise ValueError(
            f"utterance {over[0].id!r} lasts {over[0].duration:.2f} s, more than "
            f"batch_seconds={batch_seconds} ({len(over)} such); filter them out or pass drop_oversize=True"
        )
    items = [u for u in items if float(u.duration or 0.0) <= batch_seconds]
    rng = random.Random(f"buckets:{seed}")
    batches: list[list[Utterance]] = []
    k = min(num_buckets, len(items)) or 1
    for b in range(k):
        bucket = items[b * len(items) // k : (b + 1) * len(items) // k]
        rng.shuffle(bucket)
        batch: list[Utterance] = []
        total = 0.0
        for u in bucket:
            d = float(u.duration or 0.0)
            if batch and total + d > batch_seconds:
                batches.append(batch)
                batch, total = [], 0.0
            batch.append(u)
            total += d
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    yield from batches


@functools.lru_cache(maxsize=64)
def _terms_file(path: str) -> tuple[str, ...]:
    return tuple(read_terms(path))  # many utterances share one list: read it once


def utterance_prompt(utt: Utterance) -> tuple[str | None, list[str] | None]:
    """Per-utterance domain prompt and term list from the manifest (its path is already resolved)."""
    terms = utt.terms
    if isinstance(terms, str):
        terms = list(_terms_file(terms))
    return utt.prompt, terms
