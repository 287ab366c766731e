"""Conversion between llmasr manifests and lhotse CutSets (lhotse is optional: `pip install lhotse`).

lhotse's samplers, feature extraction and on-the-fly augmentation are the usual way to train
k2/icefall/NeMo-style models; this lets the sets built here feed them, and lets lhotse recipes'
corpora (LibriSpeech, ...) come back as llmasr manifests for evaluation.

A cut holds one recording (the whole file) and one supervision with the text; the manifest's other
fields (entities, prompt, augmentation, extra keys) travel in ``cut.custom``; the voice is the
supervision's speaker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llmasr.core.errors import LlmasrError
from llmasr.data.manifest import Utterance

_CUSTOM = "llmasr"


def _lhotse() -> Any:
    try:
        import lhotse
    except ImportError as e:
        raise LlmasrError("lhotse is not installed (pip install lhotse)") from e
    return lhotse


def to_cutset(utts: Iterable[Utterance]) -> Any:
    """A lhotse CutSet with one MonoCut per utterance (ids kept; audio read from the header)."""
    lhotse = _lhotse()
    from lhotse import MonoCut, Recording, SupervisionSegment

    cuts = []
    for u in utts:
        rec = Recording.from_file(u.audio, recording_id=u.id)
        duration = rec.duration if u.duration is None else min(float(u.duration), rec.duration)
        sup = SupervisionSegment(
            id=u.id,
            recording_id=u.id,
            start=0.0,
            duration=duration,
            channel=0,
            text=u.text,
            speaker=u.voice,
            language="English",
        )
        meta: dict[str, Any] = {
            "entities": list(u.entities),
            "prompt": u.prompt,
            "augmentation": u.augmentation,
            "extra": dict(u.extra),
        }
        cuts.append(
            MonoCut(
                id=u.id,
                start=0.0,
                duration=duration,
                channel=0,
                recording=rec,
                supervisions=[sup],
                custom={_CUSTOM: meta},
            )
        )
    return lhotse.CutSet.from_cuts(cuts)


def from_cutset(cuts: Iterable[Any]) -> list[Utterance]:
    """Manifest records from cuts that each cover one whole single-file recording.

    Cuts of part of a file or of in-memory audio cannot be a manifest line (which names a whole
    file): they raise LlmasrError naming the cut.
    """
    _lhotse()
    out: list[Utterance] = []
    for cut in cuts:
        rec = getattr(cut, "recording", None)
        if rec is None or len(rec.sources) != 1 or rec.sources[0].type != "file":
            raise LlmasrError(f"cut {cut.id!r}: not backed by one audio file")
        if abs(cut.start) > 1e-3 or abs(cut.duration - rec.duration) > 0.05:
            raise LlmasrError(
                f"cut {cut.id!r}: covers {cut.start:.2f}+{cut.duration:.2f} s of a file, not all"
            )
        sups = sorted(cut.supervisions, key=lambda s: s.start)
        text = " ".join(s.text.strip() for s in sups if s.text)
        meta = (cut.custom or {}).get(_CUSTOM, {})
        speaker = sups[0].speaker if sups else None
        u = Utterance(
            id=cut.id,
            audio=str(rec.sources[0].source),
            text=text,
            duration=round(float(cut.duration), 3),
            entities=list(meta.get("entities") or []),
            prompt=meta.get("prompt"),
            voice=speaker,
            augmentation=meta.get("augmentation"),
            extra=dict(meta.get("extra") or {}),
        )
        out.append(u)
    return out
