from __future__ import annotations

import numpy as np
import pytest

from llmasr.data.augment import (
    AugmentError,
    AugmentSpec,
    Bank,
    add_noise,
    augment,
    parse_spec,
    reverberate,
    speed_perturb,
    utterance_rng,
)

SR = 16000


def _speech(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.2 * env * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _snr(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def _bank() -> Bank:
    rng = np.random.default_rng(1)
    rir = np.zeros(4000, dtype=np.float32)
    rir[0] = 1.0
    rir[1:] = 0.3 * rng.standard_normal(3999) * np.exp(-np.arange(1, 4000) / 800)
    return Bank(SR, rirs={"room": rir}, noises={"hum": 0.1 * rng.standard_normal(SR // 2).astype(np.float32)})


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_add_noise_hits_the_target_snr(snr: float) -> None:
    x = _speech()
    noise = np.random.default_rng(3).standard_normal(x.size).astype(np.float32)
    assert abs(_snr(x, add_noise(x, noise, snr)) - snr) < 0.5


@pytest.mark.parametrize("kind", ["white", "pink", "babble", "hum"])
def test_augment_noise_snr_within_half_a_db(kind: str) -> None:
    x = _speech()
    spec = AugmentSpec(p=1, rir=0, noise=1, snr=(10, 10), speed=(1.0,), gain=(0, 0), noises=(kind,))
    if kind == "hum":
        spec = AugmentSpec(p=1, rir=0, noise=1, snr=(10, 10), speed=(1.0,), gain=(0, 0), noises=("real",))
    y, label = augment(x, SR, spec, np.random.default_rng(0), bank=_bank())
    assert label == f"noise:{kind}@10.0dB"
    assert abs(_snr(x, y) - 10.0) < 0.5


def test_reverberation_keeps_length_and_changes_signal() -> None:
    x = _speech()
    bank = _bank()
    y = reverberate(x, bank.rirs["room"])
    assert y.shape == x.shape and y.dtype == np.float32
    assert not np.allclose(x, y, atol=1e-3)
    assert abs(np.sqrt(np.mean(y**2)) / np.sqrt(np.mean(x**2)) - 1) < 0.01  # level kept
    spec = AugmentSpec(p=1, rir=1, noise=0, speed=(1.0,), gain=(0, 0))
    z, label = augment(x, SR, spec, np.random.default_rng(0), bank=bank)
    assert label == "rir:room" and z.shape == x.shape


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_duration(factor: float) -> None:
    x = _speech(3.0)
    y = speed_perturb(x, SR, factor)
    assert abs(len(y) - len(x) / factor) <= 2
    spec = AugmentSpec(p=1, rir=0, noise=0, speed=(factor,), gain=(0, 0))
    z, label = augment(x, SR, spec, np.random.default_rng(0), bank=_bank())
    assert label == f"speed{factor:g}" and abs(len(z) - len(x) / factor) <= 2


def test_deterministic_for_a_seed() -> None:
    x = _speech()
    spec = parse_spec("p=1,rir=0.5,noise=0.8,snr=0:20,speed=0.9:1.0:1.1")
    bank = _bank()
    runs = [augment(x, SR, spec, np.random.default_rng(42), bank=bank) for _ in range(2)]
    assert runs[0][1] == runs[1][1] and np.array_equal(runs[0][0], runs[1][0])
    labels = {augment(x, SR, spec, np.random.default_rng(s), bank=bank)[1] for s in range(20)}
    assert len(labels) > 5
    half = parse_spec("p=0.5")
    chosen = [utterance_rng(7, f"u{i}", half) is not None for i in range(400)]
    assert chosen == [utterance_rng(7, f"u{i}", half) is not None for i in range(400)]
    assert 150 < sum(chosen) < 250
    assert np.array_equal(
        utterance_rng(7, "u1", parse_spec("p=1")).random(3),
        utterance_rng(7, "u1", parse_spec("p=1")).random(3),
    )


def test_no_clipping_after_gain() -> None:
    x = _speech() * 4.5
    spec = AugmentSpec(p=1, rir=0, noise=0, speed=(1.0,), gain=(6, 6))
    y, _ = augment(x, SR, spec, np.random.default_rng(0), bank=_bank())
    assert np.max(np.abs(y)) <= 0.99 + 1e-6


def test_spec_parsing() -> None:
    s = parse_spec("p=0.3, snr=5:15, speed=0.9:1.1, gain=0, noises=white:pink, rirs=real")
    assert (s.p, s.snr, s.speed, s.gain, s.noises, s.rirs) == (
        0.3,
        (5.0, 15.0),
        (0.9, 1.1),
        (0.0, 0.0),
        ("white", "pink"),
        ("real",),
    )
    assert parse_spec(s.to_string()) == s
    assert parse_spec("") == AugmentSpec()
    for bad, words in [
        ("p=1.5", "probability"),
        ("snr=20:5", "LOW <= HIGH"),
        ("snr=a:b", "numbers"),
        ("speed=3", "between 0.5 and 2"),
        ("noises=rain", "unknown kind"),
        ("volume=3", "unknown key"),
        ("p", "key=value"),
    ]:
        with pytest.raises(AugmentError, match=words):
            parse_spec(bad)
