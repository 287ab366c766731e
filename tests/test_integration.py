"""The default pipeline (bundled Whisper tiny.en, 8-best rescored by the trained gemma-3-270m rescorer
with weights tuned on real speech) on real human speech.

The WER bounds were measured on this machine (docs/results.md) and leave a small margin:
they catch a broken model path, a broken rescorer or a regression in the normaliser, not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmasr.apps.evaluate import evaluate
from llmasr.core.metrics import normalize
from llmasr.data.real import TESTDATA, pocketsphinx_utterances
from llmasr.decoding.options import resolve_options
from llmasr.decoding.pipeline import Pipeline

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(TESTDATA).exists(), reason="Debian package pocketsphinx-testdata not installed"
    ),
]

# measured on these 12 utterances (101 words), 2026-11-30: first pass 9.90% (10 errors), default
# (8-best + the trained rescorer) 6.93% (7 errors; re-ranked with no LM 8.91%), oracle 4.95%; the
# bounds allow 3-4 more errors
FIRST_PASS_BOUND = 0.14
DEFAULT_BOUND = 0.10


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list:
    return pocketsphinx_utterances(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    options = resolve_options(threads=2)
    assert options.rescoring.lm == "gemma-3-270m-rescorer" and options.rescoring.weights.lm_weight > 0, (
        "the default rescores the 8-best with the trained rescorer, weights tuned on real dev speech"
    )
    return Pipeline(options)


def test_default_pipeline_on_real_speech(pipeline: Pipeline, utterances: list) -> None:
    report = evaluate(pipeline, utterances)
    s = report.summary()
    assert s["failed"] == 0, [r.error for r in report.rows if r.error]
    assert s["utterances"] == len(utterances) >= 10
    assert s["first_pass_wer"] < FIRST_PASS_BOUND
    assert s["wer"] < DEFAULT_BOUND
    assert s["oracle_wer"] <= s["wer"] <= s["first_pass_wer"]  # rescoring must not make it worse


def test_long_form_sample_has_absolute_times(pipeline: Pipeline) -> None:
    sample = Path(__file__).parents[1] / "src" / "llmasr" / "assets" / "sample.flac"
    tr = pipeline.transcribe(sample)
    assert tr.duration == pytest.approx(30.73, abs=0.01)
    assert len(tr.segments) >= 2  # longer than Whisper's 30 s window: split by VAD
    starts = [s.start for s in tr.segments]
    assert starts == sorted(starts) and tr.segments[-1].end <= tr.duration + 1e-6
    words = [w for s in tr.segments for w in s.words]
    assert words[-1].start > 25.0  # word times are relative to the file, not the segment
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    text = normalize(tr.text)
    # both VAD segments transcribed: words from the first and from the last sentence
    assert "dashwood" in text and "respectable" in text and "amiable himself" in text
