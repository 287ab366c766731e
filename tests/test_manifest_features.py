from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.manifest import Utterance, bucket_by_duration, duration_of, filter_duration, shuffled


def _utts(n: int = 60) -> list[Utterance]:
    rng = np.random.default_rng(0)
    return [
        Utterance(f"u{i:03d}", f"/x/u{i}.flac", "t", duration=float(rng.uniform(0.5, 9.5))) for i in range(n)
    ]


def test_filter_duration_and_header_fallback(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(24000, dtype=np.float32), 16000)
    header = Utterance("a", str(wav), "t")
    assert duration_of(header) == 1.5
    utts = _utts(20) + [header]
    kept = filter_duration(utts, 1.0, 5.0)
    assert kept and all(1.0 <= u.duration <= 5.0 for u in kept)
    assert any(u.id == "a" and u.duration == 1.5 for u in kept)
    assert header.duration is None  # inputs are not modified


def test_shuffled_is_deterministic() -> None:
    utts = _utts()
    assert [u.id for u in shuffled(utts, 1)] == [u.id for u in shuffled(utts, 1)]
    assert [u.id for u in shuffled(utts, 1)] != [u.id for u in shuffled(utts, 2)]
    assert sorted(u.id for u in shuffled(utts, 1)) == [u.id for u in utts]


def test_bucketing_limits_and_coverage() -> None:
    utts = _utts()
    batches = list(bucket_by_duration(utts, 20.0, num_buckets=4, seed=0))
    assert all(sum(u.duration for u in b) <= 20.0 for b in batches)
    assert sorted(u.id for b in batches for u in b) == [u.id for u in utts]
    spreads = [max(u.duration for u in b) - min(u.duration for u in b) for b in batches]
    assert np.mean(spreads) < 3.0  # similar lengths together
    same = [[u.id for u in b] for b in bucket_by_duration(utts, 20.0, num_buckets=4, seed=0)]
    assert same == [[u.id for u in b] for b in batches]
    other = [[u.id for u in b] for b in bucket_by_duration(utts, 20.0, num_buckets=4, seed=1)]
    assert other != same


def test_bucketing_oversize() -> None:
    utts = _utts(10) + [Utterance("long", "/x/l.flac", "t", duration=30.0)]
    with pytest.raises(ValueError, match="long"):
        list(bucket_by_duration(utts, 20.0))
    batches = list(bucket_by_duration(utts, 20.0, drop_oversize=True))
    assert "long" not in {u.id for b in batches for u in b}
    with pytest.raises(ValueError):
        list(bucket_by_duration(utts, 0))
