"""Corpus throughput of `llmasr batch`: one process unbatched, batched, and Ray with 1 and 2 workers.

    python benchmarks/batch.py [--manifest M.jsonl ...] [--limit 240] [--lm none]

The first `--limit` audio files of the manifest are linked into one folder (the input users give);
each setting is the command a user runs (so its time includes starting Python, Ray and loading the
models, reported as wall time), on that folder, writing to a fresh output folder:

  local unbatched    llmasr batch DIR --engine local --batch-size 1 --threads 2
  local batched      llmasr batch DIR --engine local --batch-size 8 --threads 2
  ray 1 worker       llmasr batch DIR --engine ray --workers 1 --cpus-per-worker 2
  ray 2 workers      llmasr batch DIR --engine ray --workers 2 --cpus-per-worker 1

Prints wall seconds, audio hours per wall hour and the ratio to the unbatched run: the table in
docs/batch.md. On a 2-core machine two workers split the same two cores; on a cluster each worker
brings its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

SETTINGS = {
    "local unbatched": ["--engine", "local", "--batch-size", "1", "--threads", "2"],
    "local batched": ["--engine", "local", "--batch-size", "8", "--threads", "2"],
    "ray 1 worker": ["--engine", "ray", "--workers", "1", "--cpus-per-worker", "2"],
    "ray 2 workers": ["--engine", "ray", "--workers", "2", "--cpus-per-worker", "1"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--manifest", type=Path, action="append",
        help="JSONL manifest(s), read in turn (default: synth_test + synth_dev, 240 utterances)",
    )  # fmt: skip
    ap.add_argument("--limit", type=int, default=240)
    ap.add_argument("--lm", default=None, help="rescoring LM (default: the default pipeline's)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    args = ap.parse_args()

    manifests = args.manifest or [Path("work-data/synth_test.jsonl"), Path("work-data/synth_dev.jsonl")]
    rows = []
    for manifest in manifests:
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row["audio"] = str((manifest.parent / row["audio"]).resolve())
                rows.append(row)
    rows = rows[: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "inputs"
        folder.mkdir()
        for r in rows:
            audio = Path(r["audio"])
            (folder / f"{r['id']}{audio.suffix}").symlink_to(audio)
        seconds = sum(float(r.get("duration") or sf.info(r["audio"]).duration) for r in rows)
        print(f"{len(rows)} inputs, {seconds / 60:.1f} min of audio; lm={args.lm or 'default'}")
        results = {}
        for name in args.settings.split(","):
            out = Path(tmp) / name.replace(" ", "").replace(",", "-")
            cmd = [sys.executable, "-m", "llmasr", "batch", str(folder), "--out", str(out), "-f", "txt",
                   *SETTINGS[name], *(["--lm", args.lm] if args.lm else [])]  # fmt: skip
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t
            log = out / "results.jsonl"
            done = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
            ok = sum(1 for d in done if d.get("status") == "ok")
            if proc.returncode != 0 or ok != len(rows):
                print(f"{name}: exit {proc.returncode}, {ok}/{len(rows)} ok: left out")
                print(proc.stderr[-2000:])
                continue
            results[name] = wall
            first = next(iter(results.values()))
            print(f"{name:18s} {wall:7.1f} s wall  {seconds / wall:6.1f} h audio per hour  "
                  f"x{first / wall:4.2f} of {next(iter(results))}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
