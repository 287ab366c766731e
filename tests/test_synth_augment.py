from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.augment import parse_spec
from llmasr.data.synth import SynthError, synthesize

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed")

TEXTS = [
    ("a1", "The cat sat on the mat."),
    ("a2", "Speech recognition is fun."),
    ("a3", "A quick brown fox jumps."),
    ("a4", "Open the window please."),
    ("a5", "It rained all day long."),
    ("a6", "Turn left at the corner."),
]


def _noise_dir(tmp_path: Path) -> Path:
    d = tmp_path / "noise"
    d.mkdir()
    rng = np.random.default_rng(0)
    rir = np.zeros(2000, dtype=np.float32)
    rir[0] = 1
    rir[1:] = 0.2 * rng.standard_normal(1999) * np.exp(-np.arange(1, 2000) / 400)
    sf.write(d / "rir1.wav", rir, 16000)
    sf.write(d / "fan.wav", 0.05 * rng.standard_normal(16000).astype(np.float32), 16000)
    return d


def test_synth_with_augmentation_resumes(tmp_path: Path) -> None:
    spec = replace(parse_spec("p=0.7,rir=0.5,noise=0.7", _noise_dir(tmp_path)), sim_rooms=0)
    out = tmp_path / "audio"
    first = synthesize(TEXTS, out, ["flite:slt"], seed=3, augment=spec)
    labels = {u.id: u.augmentation for u in first}
    assert any(labels.values()) and (out / "augment.json").is_file()
    mtimes = {u.id: Path(u.audio).stat().st_mtime_ns for u in first}
    (out / "a2.flac").unlink()
    (out / "a5.flac").unlink()
    corrupt = out / "a4.flac"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])

    again = synthesize(TEXTS, out, ["flite:slt"], seed=3, augment=spec)
    assert {u.id: u.augmentation for u in again} == labels  # labels recomputed, not stored
    for u in again:
        audio, sr = sf.read(u.audio)
        assert sr == 16000 and len(audio) > 0 and abs(len(audio) / sr - u.duration) < 0.01
        if u.id in ("a1", "a3", "a6"):
            assert Path(u.audio).stat().st_mtime_ns == mtimes[u.id]  # untouched ones not rewritten
        else:
            assert Path(u.audio).stat().st_mtime_ns != mtimes[u.id]

    with pytest.raises(SynthError, match="augmentation"):
        synthesize(TEXTS, out, ["flite:slt"], seed=3, augment=replace(spec, p=0.2))
    with pytest.raises(SynthError, match="augmentation"):
        synthesize(TEXTS, out, ["flite:slt"], seed=3)
