"""`llmasr batch`: a corpus with a corrupt file and same-stem files on Ray, resume after kill -9, and
batched decoding (many inputs per recogniser batch, one LM batch per round) giving the unbatched words."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.apps.batch import collect_inputs, run_batch
from llmasr.core.metrics import normalize

CASES = Path(__file__).resolve().parent / "cases"
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")

pytestmark = pytest.mark.integration


def corpus(tmp_path: Path) -> Path:
    """Three meetings (two sharing a stem in other folders, one beside them as FLAC) and a corrupt file."""
    root = tmp_path / "corpus"
    shutil.copytree(CASES / "07-same-stem-outputs", root)
    (root / "monday" / "notes.wav").write_text("this is not audio\n", encoding="utf-8")
    return root


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_collect_inputs_mirrors_the_tree(tmp_path: Path) -> None:
    items = collect_inputs(corpus(tmp_path), "txt")
    assert [(i.id, i.output) for i in items] == [
        ("meeting.flac", "meeting.txt"),
        ("monday/meeting.wav", "monday/meeting.txt"),
        ("monday/notes.wav", "monday/notes.txt"),
        ("tuesday/meeting.wav", "tuesday/meeting.txt"),
    ]


def test_ray_run_records_every_input_and_overwrites_nothing(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from llmasr.decoding.options import resolve_options

    root, out = corpus(tmp_path), tmp_path / "out"
    options = resolve_options(lm="none", threads=1)
    summary = run_batch(collect_inputs(root, "txt"), out, options, fmt="txt", engine="ray", workers=1)
    assert (summary.done, summary.failed, summary.skipped) == (3, 1, 0)
    by_id = {r["id"]: r for r in records(out)}
    assert set(by_id) == {"meeting.flac", "monday/meeting.wav", "monday/notes.wav", "tuesday/meeting.wav"}
    bad = by_id["monday/notes.wav"]
    assert bad["status"] == "error" and "not a readable audio file" in bad["error"] and bad["output"] is None
    texts = {p.relative_to(out).as_posix(): normalize(p.read_text()) for p in out.rglob("*.txt")}
    assert set(texts) == {"meeting.txt", "monday/meeting.txt", "tuesday/meeting.txt"}
    assert "library will close early" in texts["meeting.txt"]
    assert "quarterly report" in texts["monday/meeting.txt"]
    assert "weather station" in texts["tuesday/meeting.txt"]
    again = run_batch(collect_inputs(root, "txt"), out, options, fmt="txt", engine="ray", workers=1)
    assert (again.done, again.failed, again.skipped) == (0, 0, 4)  # all recorded: nothing redone
    assert len(records(out)) == 4


def test_resume_after_kill_loses_and_repeats_nothing(tmp_path: Path) -> None:
    if not LIBRIVOX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    root = tmp_path / "many"
    root.mkdir()
    speech, rate = sf.read(next(LIBRIVOX.glob("*.wav")), dtype="float32")
    for i in range(10):
        sf.write(root / f"clip{i:02d}.wav", np.roll(speech, i * 800), rate)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "llmasr", "batch", str(root), "--out", str(out), "--engine", "local",
               "--lm", "none", "--batch-size", "1", "-f", "txt"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "results.jsonl"
    deadline = time.time() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # midway, with no chance to clean up
    proc.wait()
    first = records(out)
    assert 2 <= len(first) < 10
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    final = records(out)
    ids = [r["id"] for r in final]
    assert sorted(ids) == [f"clip{i:02d}.wav" for i in range(10)] and len(set(ids)) == 10
    assert final[: len(first)] == first  # what was written before the kill is kept as it was
    assert all((out / f"clip{i:02d}.txt").read_text().strip() for i in range(10))
    assert not list(out.glob(".*.tmp"))  # no half-written result survives


def test_batched_decoding_gives_the_unbatched_words() -> None:
    if not LIBRIVOX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    from llmasr.decoding.options import resolve_options
    from llmasr.decoding.pipeline import Pipeline

    files = sorted(LIBRIVOX.glob("*.wav")) + sorted((LIBRIVOX.parent / "cards").glob("*.wav"))
    pipeline = Pipeline(resolve_options(batch_size=8, threads=2))  # the default LLM rescoring
    one_by_one = [pipeline.transcribe(f).text for f in files]
    batched = pipeline.transcribe_many(files)
    assert [t.text for t in batched] == one_by_one
    assert all(t.info["input"]["sample_rate"] == 16000 for t in batched)
    broken = pipeline.transcribe_many([files[0], b"not audio", files[1]], names=["a", "bad", "b"])
    assert broken[0].text == one_by_one[0] and broken[2].text == one_by_one[1]
    assert "not a readable audio file" in str(broken[1])
