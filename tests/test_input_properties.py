"""Property-based tests (hypothesis) of the loader and the CLI batch path: generated WAV, FLAC and raw files
of random rate, sample width, channel count, length (0 samples to over a minute), amplitude and file-name
bytes (not all of them UTF-8). Each either loads/transcribes or fails with one line naming the file, and a
batch always completes."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmasr.core.audio import SAMPLE_RATE, PcmFormat, display_name, read_audio  # noqa: E402
from llmasr.core.errors import AudioError  # noqa: E402

RATES = [8000, 11025, 16000, 22050, 44100, 48000]
SUBTYPES = {
    "wav": ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "ULAW", "ALAW"],
    "flac": ["PCM_S8", "PCM_16", "PCM_24"],
}
RAW = {"s16le": "<i2", "u8": "u1", "f32le": "<f4"}
NAME_PIECES = ["a", "speech", " ", "é", "日本", "🎙", "-", "(1)", "x.y"]


@st.composite
def audio_files(draw: st.DrawFn, max_seconds: float = 70.0) -> dict:
    kind = draw(st.sampled_from(["wav", "flac", "raw"]))
    rate = draw(st.sampled_from(RATES) | st.integers(4000, 96000))
    if kind == "flac" and rate > 65535:
        rate -= rate % 10  # FLAC stores a rate above 65535 Hz in tens of Hz: 65536 cannot be written
    channels = draw(st.integers(1, 4))
    n = draw(st.sampled_from([0, 1, 7]) | st.integers(8, int(rate * 3)) | st.just(int(rate * max_seconds)))
    amplitude = draw(st.sampled_from([0.0, 1e-6, 3e-3, 0.3, 1.0, 1.5]))
    subtype = draw(st.sampled_from(SUBTYPES[kind])) if kind != "raw" else draw(st.sampled_from(sorted(RAW)))
    declared = kind == "raw" and draw(st.booleans())
    stem = draw(st.lists(st.sampled_from(NAME_PIECES), min_size=1, max_size=4).map("".join))
    junk = draw(st.sampled_from([b"", b"\xe9", b"\xff\xfe", b"\x80abc"]))
    return {
        "kind": kind, "rate": rate, "channels": channels, "n": n, "amplitude": amplitude,
        "subtype": subtype, "declared": declared, "name": stem.encode() + junk,
    }  # fmt: skip


def write_signal(spec: dict) -> np.ndarray:
    """(n, channels): a tone in noise, each channel a little quieter than the one before."""
    rng = np.random.default_rng(spec["n"] + spec["channels"])
    t = np.arange(spec["n"]) / spec["rate"]
    mono = np.sin(2 * np.pi * 300 * t) * 0.7 + 0.3 * rng.standard_normal(spec["n"])
    return spec["amplitude"] * np.stack([mono * (1 - 0.2 * c) for c in range(spec["channels"])], axis=1)


def write(spec: dict, folder: Path) -> Path:
    data = write_signal(spec)
    suffix = {"wav": b".wav", "flac": b".flac", "raw": b".raw"}[spec["kind"]]
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), spec["name"] + suffix)))
    if spec["kind"] == "raw":
        x = np.clip(data, -1, 1)
        if spec["subtype"] == "u8":
            raw = np.round(x * 127 + 128).astype("u1")
        elif spec["subtype"] == "s16le":
            raw = np.round(x * 32767).astype("<i2")
        else:
            raw = x.astype("<f4")
        path.write_bytes(raw.tobytes())
    else:
        buffer = io.BytesIO()  # soundfile cannot open names that are not UTF-8; Python can
        x = np.clip(data, -1, 1) if spec["subtype"] != "FLOAT" else data
        sf.write(buffer, x, spec["rate"], subtype=spec["subtype"], format=spec["kind"].upper())
        path.write_bytes(buffer.getvalue())
    return path


def raw_format(spec: dict) -> PcmFormat | None:
    if not spec["declared"]:
        return None
    return PcmFormat(spec["rate"], spec["subtype"], spec["channels"])


def loadable(spec: dict) -> bool:
    """A file that must load: it has samples, is not silent, and states (or is given) its format."""
    audible = spec["amplitude"] >= 0.3 and spec["n"] >= 8
    return audible and (spec["kind"] != "raw" or spec["declared"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=audio_files())
def test_loader_reads_at_the_true_rate_or_names_the_problem(tmp_path_factory, spec: dict) -> None:
    folder = tmp_path_factory.mktemp("prop")
    if spec["kind"] == "flac" and spec["rate"] > 655350 // 10:  # the same duration at 48 kHz (70 s of
        spec["n"] = spec["n"] * 48000 // spec["rate"]  # 82,290 Hz at 48 kHz were 120.006 s: over the limit)
        spec["rate"] = 48000
    path = write(spec, folder)
    try:
        audio = read_audio(path, raw=raw_format(spec), max_duration=120)
    except AudioError as exc:
        message = str(exc)
        assert "\n" not in message and message.startswith(display_name(path) + ": ")
        assert not loadable(spec), message
        return
    assert loadable(spec) or spec["amplitude"] >= 1e-6 or spec["n"] > 0
    samples = audio.samples
    assert samples.dtype == np.float32 and samples.ndim == 1 and np.all(np.isfinite(samples))
    assert len(samples) == pytest.approx(spec["n"] * SAMPLE_RATE / spec["rate"], abs=2)
    assert audio.channels == spec["channels"] and audio.source_rate == spec["rate"]
    if spec["amplitude"] >= 0.3 and len(samples) >= 1600:  # the true scale: the signal's own level
        original = write_signal(spec)
        original = np.clip(original, -1, 1) if spec["subtype"] != "FLOAT" else original
        original = original.mean(axis=1)  # the channels agree in phase: the down-mix averages them
        level = np.sqrt(np.mean(original.astype(np.float64) ** 2))
        assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) == pytest.approx(level, rel=0.2)


@pytest.fixture(scope="module")
def pipeline():
    from llmasr.decoding.options import resolve_options
    from llmasr.decoding.pipeline import Pipeline
    from llmasr.models.registry import REGISTRY, is_installed

    if not is_installed(REGISTRY["whisper-tiny.en"]):
        pytest.skip("whisper-tiny.en is not installed")
    return Pipeline(resolve_options(lm="none", threads=1))


@pytest.mark.integration
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(audio_files(max_seconds=2.0), min_size=1, max_size=3))
def test_cli_batch_always_completes(tmp_path_factory, pipeline, monkeypatch, specs: list[dict]) -> None:
    from typer.testing import CliRunner

    import llmasr.apps.cli as cli

    folder = tmp_path_factory.mktemp("batch")
    paths = []
    for i, spec in enumerate(specs):
        spec["name"] = f"{i}-".encode() + spec["name"]  # distinct inputs
        paths.append(write(spec, folder))
    monkeypatch.setattr(cli, "_pipeline", lambda run_flags, **extra: (pipeline.options, pipeline))
    out = folder / "out"
    args = ["transcribe", *map(str, paths), "-f", "json", "-o", str(out)]
    declared = [s for s in specs if s["declared"]]
    if declared:  # one declared format per run: the files of other formats are refused or read from headers
        s = declared[0]
        args += ["--raw-format", f"{s['subtype']}:{s['rate']}:{s['channels']}"]
    result = CliRunner().invoke(cli.app, args, catch_exceptions=False)
    errors = (
        [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        if hasattr(result, "stderr")
        else [line for line in result.output.splitlines() if line.startswith("error: ")]
    )
    assert "Traceback" not in result.output
    from llmasr.apps.writers import output_paths

    targets = output_paths(paths, out, "json")
    failed = 0
    for path, target in zip(paths, targets):
        named = [e for e in errors if e.startswith(f"error: {display_name(path)}: ")]
        assert target.is_file() != bool(named), (path, errors)
        failed += bool(named)
    assert result.exit_code == (1 if failed else 0)
    assert len(errors) == failed
    for e in errors:
        assert re.match(r"error: .+: .+", e)
