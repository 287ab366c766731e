"""HyPoradise-style N-best corpora: the first pass's hypotheses for every utterance of a manifest.

One JSON object per line::

    {"id", "audio", "reference", "nbest": [{"text", "am_score", "tokens"}], "first_pass",
     "duration", "voice", "augmentation", "asr"}

With several recognisers (`--asr A,B`) the list is their merged one, whole (it can hold more than
`--nbest` texts), and each hypothesis also has "other_am" (the other recognisers' log-probability of
the text, nats) and "cross_agreement" (0-1), the features a merged list is rescored with.

Such a corpus trains and evaluates LLM correction/rescoring without re-running the recogniser.
Building it is slow (a recogniser per utterance), so it is resumable: ids already in the output are
skipped, each record is appended and flushed as it is made, and a half-written last line left by a
killed run is cut off before appending. An utterance that fails is reported with its id and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmasr.core.errors import LlmasrError, ManifestError, internal_error
from llmasr.core.files import read_done
from llmasr.core.types import Hypothesis
from llmasr.data.manifest import Utterance, read_manifest


@dataclass
class NbestSummary:
    """What one run did: ids written now, ids found done, and (id, problem) of the failures."""

    written: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    repaired_bytes: int = 0


def _combine(lists: list[list[Hypothesis]]) -> list[dict[str, Any]]:
    """N-best of a whole utterance from per-segment lists, each as long as the first pass made it (its
    --nbest; a merged list of several recognisers whole): rank i joins each segment's i-th (or last)."""
    lists = [nb for nb in lists if nb]
    if not lists:
        return []
    if len(lists) == 1:
        return [_hyp(h) for h in lists[0]]
    out = []
    for i in range(max(len(nb) for nb in lists)):
        picks = [nb[min(i, len(nb) - 1)] for nb in lists]
        text = " ".join(h.text.strip() for h in picks if h.text.strip())
        joined = Hypothesis(
            text,
            sum(h.am_score for h in picks),
            other_am=sum(h.other_am for h in picks),
            cross_agreement=sum(h.cross_agreement for h in picks) / len(picks),
        )
        out.append(_hyp(joined))
    return out


def _hyp(h: Hypothesis) -> dict[str, Any]:
    d: dict[str, Any] = {"text": h.text.strip(), "am_score": round(float(h.am_score), 4)}
    if h.tokens:
        d["tokens"] = [int(t) for t in h.tokens]
    if h.other_am != 0.0 or h.cross_agreement != 1.0:  # several recognisers
        d["other_am"] = round(float(h.other_am), 4)
        d["cross_agreement"] = round(float(h.cross_agreement), 4)
    return d


def record_hypotheses(record: dict[str, Any]) -> list[Hypothesis]:
    """The hypotheses of one record, as `_hyp` wrote them (KeyError/TypeError/ValueError if malformed)."""
    return [
        Hypothesis(
            text=str(h["text"]),
            am_score=float(h["am_score"]),
            tokens=[int(t) for t in h.get("tokens", [])],
            other_am=float(h.get("other_am", 0.0)),
            cross_agreement=float(h.get("cross_agreement", 1.0)),
        )
        for h in record["nbest"]
    ]


def nbest_record(utt: Utterance, pipeline: Any, *, use_prompt: bool = False) -> dict[str, Any]:
    """Run the first pass on one utterance -> its JSON record (raises LlmasrError on bad audio)."""
    from llmasr.core.audio import load_audio

    audio = load_audio(utt.audio, max_duration=pipeline.options.decoding.max_duration, name=utt.id)
    from llmasr.data.manifest import utterance_prompt

    prompt, terms = utterance_prompt(utt) if use_prompt else (None, None)
    lists = [seg.nbest for seg in pipeline.first_pass(audio, prompt, terms)]
    nbest = _combine(lists)
    return {
        "id": utt.id,
        "audio": utt.audio,
        "reference": utt.text,
        "nbest": nbest,
        "first_pass": nbest[0]["text"] if nbest else "",
        "duration": round(len(audio) / 16000, 3),
        "voice": utt.voice,
        "augmentation": utt.augmentation,
        "asr": pipeline.options.decoding.asr,
    }


def build_nbest(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    pipeline: Any,
    *,
    use_prompt: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[str], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> NbestSummary:
    """Append the N-best record of every manifest utterance not yet in `out` (see module doc).

    `pipeline` is a `llmasr.decoding.pipeline.Pipeline` (usually with lm="none"). `on_start(total)` gets the
    number of utterances to do, `on_done(id)` ticks after each, `on_error(id, problem)` reports a
    skipped one (bad manifest lines are reported as ``line N``).
    """
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    summary = NbestSummary()

    def bad_line(e: ManifestError) -> None:
        summary.errors.append((f"line {e.line}", e.problem))
        if on_error:
            on_error(f"line {e.line}", e.problem)

    utts = list(read_manifest(manifest, on_error=bad_line))
    done, summary.repaired_bytes = read_done(out_path)
    todo = []
    for u in utts:
        if u.id in done:
            summary.skipped += 1
        else:
            todo.append(u)
            done.add(u.id)  # a repeated id in the manifest is done once
    if on_start:
        on_start(len(todo))
    with open(out_path, "a", encoding="utf-8") as fh:
        for utt in todo:
            try:
                rec = nbest_record(utt, pipeline, use_prompt=use_prompt)
            except Exception as e:  # one utterance's failure (even a bug) never stops the corpus
                problem = str(e) if isinstance(e, LlmasrError) else internal_error(utt.audio, e)
                summary.errors.append((utt.id, problem))
                if on_error:
                    on_error(utt.id, problem)
            else:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                summary.written += 1
            if on_done:
                on_done(utt.id)
    return summary
