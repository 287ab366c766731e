"""Frozen speech-encoder states of a manifest, computed once and kept on disk.

Models that train on top of a frozen encoder (the CTC head, the entity retriever) would otherwise pay
for the encoder on every step; on a CPU that is most of the cost (whisper-tiny.en: ~0.3 s per
utterance on one core, since Whisper always encodes a 30 s window). Only the frames that hold audio
are kept, as float16, in shards of `shard_size` utterances (`states-NNNNN.npz`: `frames` (sum T, D),
`offsets`, `ids`; `texts.json` beside them). A finished shard that holds exactly its utterances is never
recomputed, so an interrupted run resumes where it stopped, and a manifest that grew (a synthesis that
resumed) fills its last, partial shard and the new ones. A shard with an unreadable utterance is
recomputed on every run (the utterance is reported again).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmasr.components.speech.encoders import encode_utterances
from llmasr.core.audio import load_audio
from llmasr.core.errors import LlmasrError
from llmasr.core.files import atomic_write
from llmasr.data.manifest import Utterance


@dataclass
class EncodedUtterance:
    id: str
    text: str
    #: (T, D) float16: the encoder frames that hold audio
    states: np.ndarray
    entities: list[str]


#: which encoder (and window) made a folder's states: one folder never mixes two
ENCODER_META = "encoder.json"


def encoder_setup(folder: str | Path) -> dict[str, object]:
    """{"encoder": name, "trim_tail": seconds or None} of a states folder ({} for older folders)."""
    path = Path(folder) / ENCODER_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _shard_ids(path: Path) -> set[str]:
    """The utterance ids a finished shard holds (empty when it cannot be read)."""
    try:
        with np.load(path) as shard:
            return {str(i) for i in shard["ids"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return set()


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"states-{index:05d}.npz"


def cache_states(
    encoder: torch.nn.Module,
    utts: Sequence[Utterance],
    folder: str | Path,
    *,
    shard_size: int = 250,
    batch_size: int = 8,
    on_error: Callable[[Utterance, Exception], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Encode `utts` into `folder` (see the module doc); unreadable audio is reported and skipped."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    setup = {
        "encoder": getattr(getattr(encoder, "info", None), "name", None),
        "trim_tail": getattr(encoder, "trim_tail", None),
    }
    meta_path = out / ENCODER_META
    if meta_path.is_file() and json.loads(meta_path.read_text(encoding="utf-8")) != setup:
        raise LlmasrError(f"{out}: holds states of another encoder setup ({meta_path}); use a new folder")
    with atomic_write(meta_path) as fh:
        fh.write(json.dumps(setup))
    meta = {u.id: {"text": u.text, "entities": list(u.entities)} for u in utts}
    with atomic_write(out / "texts.json") as fh:
        fh.write(json.dumps(meta))
    for index, start in enumerate(range(0, len(utts), shard_size)):
        # similar lengths together: a trimmed encoder pads each batch only to its longest utterance
        chunk = sorted(utts[start : start + shard_size], key=lambda u: float(u.duration or 0.0))
        path = _shard_path(out, index)
        if path.is_file() and _shard_ids(path) == {u.id for u in chunk}:
            if progress:
                progress(len(chunk))
            continue
        frames: list[np.ndarray] = []
        ids: list[str] = []
        for b in range(0, len(chunk), batch_size):
            batch, audio = [], []
            for u in chunk[b : b + batch_size]:
                try:
                    audio.append(load_audio(u.audio))
                    batch.append(u)
                except LlmasrError as exc:
                    if on_error:
                        on_error(u, exc)
            if audio:
                frames += encode_utterances(encoder, audio)
                ids += [u.id for u in batch]
            if progress:
                progress(len(chunk[b : b + batch_size]))
        offsets = np.cumsum([0] + [len(f) for f in frames])
        stacked = np.concatenate(frames) if frames else np.zeros((0, 0), np.float16)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, frames=stacked, offsets=offsets, ids=np.array(ids))
        tmp.replace(path)
    return out


def read_states(folder: str | Path) -> Iterator[EncodedUtterance]:
    """Every cached utterance, shard by shard."""
    root = Path(folder)
    meta_path = root / "texts.json"
    if not meta_path.is_file():
        raise LlmasrError(f"{root}: no encoder states here (texts.json missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    for path in sorted(root.glob("states-*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path) as shard:
            frames, offsets, ids = shard["frames"], shard["offsets"], shard["ids"]
        for i, uid in enumerate(ids):
            m = meta.get(str(uid), {"text": "", "entities": []})
            yield EncodedUtterance(
                str(uid), m["text"], frames[offsets[i] : offsets[i + 1]], list(m.get("entities", []))
            )
