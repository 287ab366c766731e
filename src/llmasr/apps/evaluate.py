"""Evaluation on a manifest: rescored, first-pass and oracle WER, entity recall, RTFx.

All texts go through one normaliser (llmasr.core.metrics.normalize) before scoring.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmasr.core.audio import load_input
from llmasr.core.errors import LlmasrError, internal_error
from llmasr.core.metrics import entity_recall, greedy_oracle, normalize, word_errors
from llmasr.core.types import Transcript
from llmasr.data.manifest import Utterance, utterance_prompt
from llmasr.decoding.pipeline import Pipeline
from llmasr.decoding.tune import Decoded


@dataclass
class Row:
    id: str
    reference: str
    hypothesis: str = ""
    first_pass: str = ""
    oracle: str = ""
    ref_words: int = 0
    errors: int = 0
    first_pass_errors: int = 0
    oracle_errors: int = 0
    entities_found: int = 0
    entities_total: int = 0
    duration: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    voice: str | None = None
    augmentation: str | None = None
    #: the kind of speech (read, conversational, prompt, command, digits), from the manifest
    style: str | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def _ok(self) -> list[Row]:
        return [r for r in self.rows if r.error is None]

    def _rate(self, key: str) -> float | None:
        ok = self._ok()
        words = sum(r.ref_words for r in ok)
        return sum(getattr(r, key) for r in ok) / words if words else None

    @property
    def wer(self) -> float | None:
        return self._rate("errors")

    @property
    def first_pass_wer(self) -> float | None:
        return self._rate("first_pass_errors")

    @property
    def oracle_wer(self) -> float | None:
        return self._rate("oracle_errors")

    @property
    def entity_recall(self) -> float | None:
        ok = self._ok()
        total = sum(r.entities_total for r in ok)
        return sum(r.entities_found for r in ok) / total if total else None

    @property
    def rtfx(self) -> float | None:
        ok = self._ok()
        seconds = sum(r.seconds for r in ok)
        return sum(r.duration for r in ok) / seconds if seconds else None

    def breakdown(self, key: str) -> dict[str, dict[str, Any]]:
        """WER per value of a row field (voice, augmentation), e.g. to see which voices are hard."""
        groups: dict[str, list[Row]] = {}
        for r in self._ok():
            groups.setdefault(group_label(key, getattr(r, key)), []).append(r)
        return {
            label: Report(rows=rows).summary() | {"words": sum(r.ref_words for r in rows)}
            for label, rows in sorted(groups.items())
        }

    def summary(self) -> dict[str, Any]:
        ok = self._ok()
        return {
            "wer": self.wer,
            "first_pass_wer": self.first_pass_wer,
            "oracle_wer": self.oracle_wer,
            "entity_recall": self.entity_recall,
            "rtfx": self.rtfx,
            "utterances": len(ok),
            "failed": len(self.rows) - len(ok),
            "audio_seconds": round(sum(r.duration for r in ok), 2),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "settings": self.settings, "rows": [asdict(r) for r in self.rows]}


def group_label(key: str, value: object) -> str:
    """Labels without their parameters: 'espeak:en-us@s0.94p63' -> 'espeak:en-us',
    'speed1.1+rir:sim3-rt0.63+gain-2.2dB' -> 'gain+rir+speed'."""
    if value is None or value == "":
        return "none"
    text = str(value)
    if key == "augmentation":
        parts = re.split(r"\+(?=[a-z])", text)  # "+" also signs gains: "gain+0.3dB"
        kinds = {re.sub(r"[-+]?[\d.]+(dB)?$", "", part.split(":")[0]) for part in parts if part}
        return "+".join(sorted(kinds)) or "none"
    return text.split("@")[0]


def oracle_text(transcript: Transcript, reference: str) -> str:
    """Best text reachable by picking one hypothesis per segment (`greedy_oracle`)."""
    return greedy_oracle(reference, [[h.text for h in s.nbest] or [s.text] for s in transcript.segments])


def evaluate(
    pipeline: Pipeline,
    utterances: Iterable[Utterance],
    *,
    use_prompts: bool = True,
    on_row: Callable[[Row], None] | None = None,
) -> Report:
    report = Report(settings={"asr": pipeline.options.decoding.asr, "lm": pipeline.options.rescoring.lm})
    for utt in utterances:
        row = Row(
            id=utt.id,
            reference=utt.text,
            voice=utt.voice,
            augmentation=utt.augmentation,
            style=utt.extra.get("style"),
        )
        ref_norm = normalize(utt.text)
        row.ref_words = len(ref_norm.split())
        try:
            prompt, terms = utterance_prompt(utt) if use_prompts else (None, None)
            started = time.perf_counter()
            tr = pipeline.transcribe(utt.audio, prompt=prompt, terms=terms, name=str(utt.audio))
            row.seconds = time.perf_counter() - started
            row.duration = tr.duration
            row.hypothesis, row.first_pass = tr.text, tr.first_pass_text
            row.oracle = oracle_text(tr, utt.text)
            row.errors = word_errors(utt.text, row.hypothesis)[0]
            row.first_pass_errors = word_errors(utt.text, row.first_pass)[0]
            row.oracle_errors = word_errors(utt.text, row.oracle)[0]
            if utt.entities:
                row.entities_found, row.entities_total = entity_recall(utt.entities, row.hypothesis)
        except LlmasrError as exc:
            row.error = str(exc)
        except Exception as exc:  # a bug costs one utterance, not the evaluation
            row.error = internal_error(utt.audio, exc)
        report.rows.append(row)
        if on_row:
            on_row(row)
    return report


def first_passes(
    pipeline: Pipeline,
    utterances: Iterable[Utterance],
    *,
    on_item: Callable[[Decoded | None, str | None], None] | None = None,
) -> list[Decoded]:
    """The first pass over a dev manifest, once (what `llmasr tune` re-scores with every LM); errors are
    reported per utterance and skipped."""
    out = []
    for utt in utterances:
        try:
            prompt, terms = utterance_prompt(utt)
            _, audio = load_input(utt.audio, max_duration=pipeline.options.decoding.max_duration)
            audio = audio.samples
            segs = [s for s in pipeline.first_pass(audio, prompt, terms) if s.nbest]
            item = Decoded(utt.id, utt.text, prompt, [s.nbest for s in segs], [s.terms for s in segs])
            out.append(item)
            if on_item:
                on_item(item, None)
        except Exception as exc:  # one utterance's failure (even a bug) never stops the tuning
            if on_item:
                on_item(None, str(exc) if isinstance(exc, LlmasrError) else internal_error(utt.audio, exc))
    return out
