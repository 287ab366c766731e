"""Acoustic augmentation of clean (TTS) speech: reverberation, additive noise, speed, gain.

TTS audio is unnaturally clean; training or tuning on it alone over-fits to studio conditions.
A spec string (``--augment``) selects what is applied::

    p=0.5,rir=0.5,noise=0.5,snr=5:20,speed=0.9:1.0:1.1,gain=-6:6,noises=real:white:pink:babble,rirs=real:sim

* ``p``: fraction of utterances augmented at all (the rest stay clean, label None);
* ``rir`` / ``noise``: probability, for an augmented utterance, of reverberation / additive noise;
* ``snr``: SNR range in dB (uniform); ``speed``: factors, one picked uniformly (list ``1.0`` to keep
  some at natural speed); ``gain``: range in dB (uniform; ``gain=0`` turns it off);
* ``noises``: kinds of noise: ``real`` (clips in the noise folder), ``white``, ``pink``, ``babble``
  (speech-shaped, syllable-rate modulated noise from several "talkers");
* ``rirs``: ``real`` (RIR files in the noise folder) and/or ``sim`` (shoebox rooms simulated with the
  optional ``pyroomacoustics``; skipped with no error when it is not installed).

Every random choice comes from the caller's ``numpy.random.Generator``; the label-relevant choices
are drawn first (`plan`), so a resumed build can recompute an utterance's label without audio.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from llmasr.core.errors import LlmasrError

NOISE_KINDS = ("real", "white", "pink", "babble")
RIR_KINDS = ("real", "sim")
DEFAULT_SPEC = "p=0.5,rir=0.5,noise=0.5,snr=5:20,speed=0.9:1.0:1.1,gain=-6:6"


class AugmentError(LlmasrError):
    """A malformed augmentation spec or an unusable noise folder."""


@dataclass(frozen=True)
class AugmentSpec:
    """What to apply and how often; see the module docstring for the string form."""

    p: float = 0.5
    rir: float = 0.5
    noise: float = 0.5
    snr: tuple[float, float] = (5.0, 20.0)
    speed: tuple[float, ...] = (0.9, 1.0, 1.1)
    gain: tuple[float, float] = (-6.0, 6.0)
    noises: tuple[str, ...] = NOISE_KINDS
    rirs: tuple[str, ...] = RIR_KINDS
    noise_dir: str | None = None
    #: simulated rooms in the bank (fixed seed), drawn once per process
    sim_rooms: int = 8

    def to_string(self) -> str:
        """The spec string this parses back from (recorded beside built data)."""

        def r(v: tuple[float, ...]) -> str:
            return ":".join(f"{x:g}" for x in v)

        return (
            f"p={self.p:g},rir={self.rir:g},noise={self.noise:g},snr={r(self.snr)},speed={r(self.speed)},"
            f"gain={r(self.gain)},noises={':'.join(self.noises)},rirs={':'.join(self.rirs)}"
        )


def _floats(key: str, value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(":"))
    except ValueError:
        raise AugmentError(f"--augment {key}={value!r}: expected numbers separated by ':'") from None


def _prob(key: str, value: str) -> float:
    v = _floats(key, value)
    if len(v) != 1 or not 0.0 <= v[0] <= 1.0:
        raise AugmentError(f"--augment {key}={value!r}: expected a probability between 0 and 1")
    return v[0]


def _range(key: str, value: str) -> tuple[float, float]:
    v = _floats(key, value)
    if len(v) == 1:
        v = (v[0], v[0])
    if len(v) != 2 or v[0] > v[1]:
        raise AugmentError(f"--augment {key}={value!r}: expected LOW:HIGH with LOW <= HIGH, or one number")
    return v[0], v[1]


def parse_spec(text: str, noise_dir: str | Path | None = None) -> AugmentSpec:
    """Parse ``key=value,...`` over the defaults; raises AugmentError naming the bad item."""
    spec = AugmentSpec(noise_dir=str(noise_dir) if noise_dir else None)
    changes: dict[str, object] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise AugmentError(f"--augment {item!r}: expected key=value")
        if key in ("p", "rir", "noise"):
            changes[key] = _prob(key, value)
        elif key in ("snr", "gain"):
            changes[key] = _range(key, value)
        elif key == "speed":
            factors = _floats(key, value)
            if any(not 0.5 <= f <= 2.0 for f in factors):
                raise AugmentError(f"--augment speed={value!r}: factors must be between 0.5 and 2")
            changes[key] = factors
        elif key in ("noises", "rirs"):
            known = NOISE_KINDS if key == "noises" else RIR_KINDS
            kinds = tuple(k.strip().lower() for k in value.split(":") if k.strip())
            bad = [k for k in kinds if k not in known]
            if bad or not kinds:
                raise AugmentError(
                    f"--augment {key}={value!r}: unknown kind {bad} (known: {', '.join(known)})"
                )
            changes[key] = kinds
        else:
            raise AugmentError(
                f"--augment {key!r}: unknown key (known: p, rir, noise, snr, speed, gain, noises, rirs)"
            )
    return replace(spec, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Resources: RIRs and noise clips, loaded once per (folder, rooms).
# ---------------------------------------------------------------------------------------------


@dataclass
class Bank:
    """Impulse responses and noise clips at one sample rate, by name."""

    sr: int
    rirs: dict[str, np.ndarray] = field(default_factory=dict)
    noises: dict[str, np.ndarray] = field(default_factory=dict)


def _read_mono(path: Path, sr: int) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio[:, 0]  # first channel of a multi-mic RIR
    if rate != sr:
        import soxr

        audio = soxr.resample(audio, rate, sr, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _prepare_rir(h: np.ndarray) -> np.ndarray:
    """Start at the direct path (no delay shift) and unit energy (convolution keeps the level)."""
    h = np.asarray(h, dtype=np.float64)
    h = h[max(0, int(np.argmax(np.abs(h))) - 16) :]
    energy = float(np.sqrt(np.sum(h**2)))
    if energy <= 0:
        raise AugmentError("impulse response is all zeros")
    return (h / energy).astype(np.float32)


def simulate_rirs(n: int, sr: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` shoebox-room RIRs (RT60 0.2-0.8 s) with pyroomacoustics; {} when it is not installed."""
    try:
        import pyroomacoustics as pra
    except ImportError:
        return {}
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for i in range(n):
        dims = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
        rt60 = float(rng.uniform(0.2, 0.8))
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:
            continue
        room = pra.ShoeBox(dims, fs=sr, materials=pra.Material(absorption), max_order=min(max_order, 12))
        src = rng.uniform([0.5, 0.5, 1.2], dims - [0.5, 0.5, 0.8])
        mic = rng.uniform([0.5, 0.5, 1.0], dims - [0.5, 0.5, 1.0])
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        out[f"sim{i}-rt{rt60:.2f}"] = _prepare_rir(np.asarray(room.rir[0][0]))
    return out


def _folder_files(folder: Path, kind: str) -> list[Path]:
    index = folder / "index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8")).get(kind, [])
        return [folder / n for n in names if (folder / n).is_file()]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".wav", ".flac"))
    is_rir = [("rir" in p.name.lower()) for p in files]
    return [p for p, r in zip(files, is_rir) if r == (kind == "rirs")]


@functools.lru_cache(maxsize=4)
def load_bank(noise_dir: str | None, sim_rooms: int = 8, sr: int = 16000) -> Bank:
    """RIRs and noise clips of `noise_dir` (``index.json`` with "rirs"/"noises", or rir*.wav + the
    other audio files) plus `sim_rooms` simulated rooms; cached per process."""
    bank = Bank(sr)
    if noise_dir:
        folder = Path(noise_dir)
        if not folder.is_dir():
            raise AugmentError(f"{folder}: noise folder not found (built by `llmasr data real`)")
        for p in _folder_files(folder, "rirs"):
            bank.rirs[p.stem] = _prepare_rir(_read_mono(p, sr))
        for p in _folder_files(folder, "noises"):
            audio = _read_mono(p, sr)
            if audio.size and float(np.sqrt(np.mean(audio**2))) > 1e-5:
                bank.noises[p.stem] = audio
    bank.rirs.update(simulate_rirs(sim_rooms, sr))
    return bank


# ---------------------------------------------------------------------------------------------
# Signal operations (public: each is tested on its own).
# ---------------------------------------------------------------------------------------------


def speed_perturb(audio: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Play `factor` times faster (tempo and pitch, as Kaldi's speed perturbation): length / factor."""
    if factor == 1.0:
        return audio
    import soxr

    return soxr.resample(audio, sr * factor, sr, quality="HQ").astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with a room impulse response (FFT), keep the input's length and RMS level."""
    n = len(audio) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(rir, size), size)[: len(audio)]
    rms_in, rms_out = _rms(audio), _rms(wet)
    if rms_out > 0:
        wet *= rms_in / rms_out
    return wet.astype(np.float32)


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix `noise` (same length) so that 10 log10(P_speech / P_noise) == snr_db over the whole clip."""
    p_s, p_n = _rms(audio) ** 2, _rms(noise) ** 2
    if p_s <= 0 or p_n <= 0:
        return audio.copy()
    scale = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return (audio + scale * noise).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by spectral shaping of white noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / (np.std(x) or 1.0)).astype(np.float32)


def babble_noise(n: int, sr: int, rng: np.random.Generator, talkers: int = 6) -> np.ndarray:
    """Babble-like noise: several speech-band (300-3400 Hz) noises with syllable-rate (3-6 Hz) envelopes."""
    t = np.arange(n) / sr
    out = np.zeros(n, dtype=np.float64)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    band = ((freqs > 300) & (freqs < 3400)) / np.sqrt(np.maximum(freqs, 100) / 300)
    for _ in range(talkers):
        x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * band, n)
        rate, phase = rng.uniform(3, 6), rng.uniform(0, 2 * np.pi)
        env = np.clip(np.sin(2 * np.pi * rate * t + phase), 0, None) ** 2
        out += x * env * rng.uniform(0.5, 1.0)
    return (out / (np.std(out) or 1.0)).astype(np.float32)


def _crop(clip: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if clip.size >= n:
        start = int(rng.integers(0, clip.size - n + 1))
        return clip[start : start + n]
    reps = -(-n // clip.size)
    return np.tile(clip, reps)[:n]


# ---------------------------------------------------------------------------------------------
# The plan (label-relevant random choices) and its application.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The choices for one utterance; `label` is what the manifest records."""

    speed: float = 1.0
    rir: str | None = None
    noise: str | None = None
    snr: float | None = None
    gain: float = 0.0

    @property
    def label(self) -> str | None:
        parts = []
        if self.speed != 1.0:
            parts.append(f"speed{self.speed:g}")
        if self.rir:
            parts.append(f"rir:{self.rir}")
        if self.noise:
            parts.append(f"noise:{self.noise}@{self.snr:.1f}dB")
        if self.gain:
            parts.append(f"gain{self.gain:+.1f}dB")
        return "+".join(parts) or None


def plan(spec: AugmentSpec, rng: np.random.Generator, bank: Bank | None = None) -> Plan:
    """Draw the choices for one augmented utterance (always the same number of draws)."""
    bank = bank if bank is not None else load_bank(spec.noise_dir, spec.sim_rooms)
    speed = float(spec.speed[int(rng.integers(len(spec.speed)))]) if spec.speed else 1.0
    u_rir, u_noise = rng.random(), rng.random()
    rir_pick, noise_pick = rng.random(), rng.random()
    snr = float(rng.uniform(*spec.snr))
    gain = round(float(rng.uniform(*spec.gain)), 1)
    rirs = sorted(n for n in bank.rirs if ("sim" if n.startswith("sim") else "real") in spec.rirs)
    kinds = [k for k in spec.noises if k != "real"] + sorted(bank.noises if "real" in spec.noises else [])
    rir = rirs[int(rir_pick * len(rirs))] if rirs and u_rir < spec.rir else None
    noise = kinds[int(noise_pick * len(kinds))] if kinds and u_noise < spec.noise else None
    return Plan(speed, rir, noise, round(snr, 1) if noise else None, gain)


def apply(audio: np.ndarray, sr: int, p: Plan, rng: np.random.Generator, bank: Bank) -> np.ndarray:
    """speed -> reverberation -> noise -> gain, then peak-limited to 0.99 (scaling keeps the SNR)."""
    x = speed_perturb(np.asarray(audio, dtype=np.float32), sr, p.speed)
    if p.rir:
        x = reverberate(x, bank.rirs[p.rir])
    if p.noise:
        if p.noise == "white":
            noise = white_noise(x.size, rng)
        elif p.noise == "pink":
            noise = pink_noise(x.size, rng)
        elif p.noise == "babble":
            noise = babble_noise(x.size, sr, rng)
        else:
            noise = _crop(bank.noises[p.noise], x.size, rng)
        x = add_noise(x, noise, float(p.snr))  # type: ignore[arg-type]
    x = x * np.float32(10 ** (p.gain / 20))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.99:
        x = x * np.float32(0.99 / peak)
    return x.astype(np.float32)


def augment(
    audio: np.ndarray, sr: int, spec: AugmentSpec, rng: np.random.Generator, *, bank: Bank | None = None
) -> tuple[np.ndarray, str | None]:
    """Augment one utterance (always; the fraction `spec.p` is the caller's decision, see
    `utterance_rng`) -> (audio, label). `bank` defaults to the spec's noise folder (cached)."""
    if bank is None:
        bank = load_bank(spec.noise_dir, spec.sim_rooms, sr)
    chosen = plan(spec, rng, bank)
    return apply(audio, sr, chosen, rng, bank), chosen.label


def utterance_rng(seed: int, uid: str, spec: AugmentSpec) -> np.random.Generator | None:
    """A generator for utterance `uid` if it is among the fraction `spec.p` to augment, else None.

    A pure function of (seed, uid), so a resumed or parallel build makes the same decisions.
    """
    import hashlib

    digest = hashlib.sha256(f"augment:{seed}:{uid}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / float(1 << 64)
    if u >= spec.p:
        return None
    return np.random.default_rng(int.from_bytes(digest[8:16], "big"))
