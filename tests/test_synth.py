from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from llmasr.data.synth import choose_voice, synthesize

pytestmark = pytest.mark.skipif(
    shutil.which("flite") is None,
    reason="flite is not installed (the Makefile installs it: apt-get install flite)",
)


def test_synthesize_flac_and_resume(tmp_path: Path) -> None:
    texts = [("s1", "The cat sat on the mat."), ("s2", "Speech recognition is fun.")]
    utts = synthesize(texts, tmp_path, ["flite:slt"], seed=0, jobs=2)
    assert [u.id for u in utts] == ["s1", "s2"]
    mtimes = {}
    for u in utts:
        info = sf.info(u.audio)
        assert Path(u.audio) == tmp_path.resolve() / f"{u.id}.flac"
        assert info.format == "FLAC" and info.samplerate == 16000 and info.channels == 1
        assert u.duration is not None and u.duration > 0
        assert abs(info.duration - u.duration) < 0.01
        assert u.voice == "flite:slt"
        mtimes[u.id] = Path(u.audio).stat().st_mtime_ns
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    again = synthesize(texts, tmp_path, ["flite:slt"], seed=0, jobs=2)
    for u in again:
        assert Path(u.audio).stat().st_mtime_ns == mtimes[u.id]  # not rewritten
    assert [u.duration for u in again] == [u.duration for u in utts]


def test_voice_choice_is_deterministic() -> None:
    voices = ["flite:slt", "flite:rms", "flite:awb", "espeak:en-us"]
    a = [choose_voice(f"u{i}", voices, 3) for i in range(20)]
    assert a == [choose_voice(f"u{i}", voices, 3) for i in range(20)]
    assert len({v for v, _, _ in a}) > 1
