from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.core.files import read_done
from llmasr.core.types import Hypothesis, Word
from llmasr.data.manifest import Utterance, write_manifest
from llmasr.data.nbest import build_nbest
from llmasr.decoding.options import resolve_options
from llmasr.decoding.pipeline import Pipeline


class FakeRecognizer:
    """N-best lists that depend only on the segment length, so reruns give the same records."""

    name = "fake-asr"
    window = 30.0

    def __init__(self) -> None:
        self.calls = 0

    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        self.calls += len(segments)
        return [
            [
                Hypothesis(text=f"hyp {len(s)} {i}", am_score=-1.0 * i - len(s) / 1e5, tokens=[i, 7])
                for i in range(n)
            ]
            for s in segments
        ]

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        return []


def _manifest(tmp_path: Path, n: int = 5) -> Path:
    utts = []
    for i in range(n):
        path = tmp_path / f"u{i}.flac"
        t = np.arange(8000 + 1600 * i) / 16000
        sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", str(path), f"reference {i}", voice="flite:slt", augmentation=None))
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"this is not audio")
    utts.insert(2, Utterance("bad", str(bad), "broken"))
    return write_manifest(utts, tmp_path / "m.jsonl")


def _pipeline(fake: FakeRecognizer) -> Pipeline:
    return Pipeline(resolve_options(asr="fake-asr", lm="none", nbest=3), recognizer=fake)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_and_bad_audio_skipped(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "nbest.jsonl"
    errors: list[tuple[str, str]] = []
    summary = build_nbest(
        manifest, out, _pipeline(FakeRecognizer()), on_error=lambda i, m: errors.append((i, m))
    )
    assert summary.written == 5 and summary.skipped == 0
    assert [e[0] for e in errors] == ["bad"] and summary.errors == errors
    recs = _records(out)
    assert [r["id"] for r in recs] == [f"u{i}" for i in range(5)]
    r = recs[0]
    assert r["reference"] == "reference 0" and len(r["nbest"]) == 3
    # the fake's text holds the samples it got: 0.5 s plus the edge padding (vad.EDGE_PAD) both sides
    assert r["nbest"][0] == {"text": "hyp 14400 0", "am_score": -0.144, "tokens": [0, 7]}
    assert r["first_pass"] == "hyp 14400 0" and r["duration"] == 0.5
    assert r["voice"] == "flite:slt" and r["augmentation"] is None and r["asr"] == "fake-asr"
    assert Path(r["audio"]).is_file()


def test_resume_after_kill(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "nbest.jsonl"
    build_nbest(manifest, out, _pipeline(FakeRecognizer()))
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    # killed while writing the 4th record: 3 whole lines and half of the next
    out.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    fake = FakeRecognizer()
    summary = build_nbest(manifest, out, _pipeline(fake))
    assert summary.repaired_bytes == len(lines[3]) // 2
    assert summary.skipped == 3 and summary.written == 2 and fake.calls == 2
    assert out.read_bytes() == full  # same records, no duplicates, nothing half-written
    again = build_nbest(manifest, out, _pipeline(FakeRecognizer()))
    assert again.written == 0 and again.skipped == 5 and out.read_bytes() == full


def test_read_done_keeps_unterminated_whole_record(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")
    done, removed = read_done(out)
    assert done == {"a", "b"} and removed == 0
    assert out.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "b"}\n'


def test_records_read_back_as_hypotheses() -> None:
    from llmasr.core.types import Hypothesis
    from llmasr.data.nbest import _hyp, record_hypotheses

    hyps = [Hypothesis("Hello there.", -1.25, tokens=[5, 6]), Hypothesis("hello dare", -2.5)]
    back = record_hypotheses({"nbest": [_hyp(h) for h in hyps]})
    assert [(h.text, h.am_score, h.tokens) for h in back] == [
        ("Hello there.", -1.25, [5, 6]),
        ("hello dare", -2.5, []),
    ]


def test_merged_list_features_are_kept_whole_and_read_back() -> None:
    """Several recognisers: the merged list is written whole, its features survive a round trip."""
    from llmasr.core.types import Hypothesis
    from llmasr.data.nbest import _combine, record_hypotheses

    merged = [Hypothesis(f"text {i}", -float(i), other_am=-2.0 * i, cross_agreement=0.5) for i in range(5)]
    rec = {"nbest": _combine([merged])}
    back = record_hypotheses(rec)
    assert [h.text for h in back] == [f"text {i}" for i in range(5)]
    assert [(h.other_am, h.cross_agreement) for h in back] == [(-2.0 * i, 0.5) for i in range(5)]
    two = _combine([merged[:2], merged[:2]])  # a long recording: segments joined rank by rank
    assert [(h["other_am"], h["cross_agreement"]) for h in two] == [(0.0, 0.5), (-4.0, 0.5)]
    single = record_hypotheses({"nbest": _combine([[Hypothesis("a b", -1.0)]])})
    assert (single[0].other_am, single[0].cross_agreement) == (0.0, 1.0)
