"""Load test of `llmasr serve`: throughput, latency percentiles, failures and memory growth.

    python benchmarks/serve_load.py [--requests 300] [--concurrency 8] [--rounds 3] [--lm none]
                                    [--asr whisper-tiny.en] [--server-concurrency 1] [--threads 2]

Starts the server as a subprocess on a free 127.0.0.1 port, sends `--requests` transcription requests
of real speech (pocketsphinx-testdata's LibriVox clips, round robin) per round, at most
`--concurrency` in flight (httpx, async), and after each round reads the server's resident memory.
A server that leaks shows RSS growing round after round, so the last/first ratio is printed; a
healthy one levels off after the first round (allocator pools, model caches). Bounded: each round
stops after `--round-timeout` seconds, and the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"


@dataclass
class Round:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    wer_errors: int = 0
    wer_words: int = 0
    audio_seconds: float = 0.0
    wall: float = 0.0
    rss_mb: float | None = None
    unsent: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB: psutil when installed, else /proc/PID/status (Linux)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def references() -> dict[str, str]:
    """LibriVox clip name -> reference text, from the test data's transcription file."""
    refs = {}
    path = Path(LIBRIVOX) / "transcription"
    if path.exists():
        for line in path.read_text().splitlines():
            m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
            if m:
                refs[m.group(2)] = m.group(1)
    return refs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "llmasr.apps.serve.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--asr",
        args.asr,
        "--lm",
        args.lm,
        "--concurrency",
        str(args.server_concurrency),
        # enough room that the client's own concurrency never meets a 503
        "--queue-size",
        str(max(16, args.concurrency)),
        "--log-level",
        "warning",
    ]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=None)


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/health", timeout=2).json().get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:g} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def run_round(
    base: str, clips: list[tuple[str, bytes, float]], refs: dict[str, str], args: argparse.Namespace
) -> Round:
    from llmasr.core.metrics import word_errors

    result = Round()
    gate = asyncio.Semaphore(args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency)

    async def one(i: int, client: httpx.AsyncClient) -> None:
        name, data, seconds = clips[i % len(clips)]
        async with gate:
            started = time.perf_counter()
            try:
                r = await client.post(
                    f"{base}/v1/audio/transcriptions",
                    files={"file": (name + ".wav", data, "audio/wav")},
                    data={"model": "whisper-1"},
                )
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                result.failures[key] = result.failures.get(key, 0) + 1
                return
            elapsed = time.perf_counter() - started
        if r.status_code != 200:
            key = str(r.status_code)
            result.failures[key] = result.failures.get(key, 0) + 1
            return
        result.latencies.append(elapsed)
        result.audio_seconds += seconds
        if name in refs:
            errors, words = word_errors(refs[name], r.json()["text"])
            result.wer_errors += errors
            result.wer_words += words

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as client:
        tasks = [asyncio.create_task(one(i, client)) for i in range(args.requests)]
        done, pending = await asyncio.wait(tasks, timeout=args.round_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        result.unsent = len(pending)
    result.wall = time.perf_counter() - started
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per round")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--asr", default="whisper-tiny.en")
    ap.add_argument("--lm", default="none", help="rescoring LM of the server ('none': first pass only)")
    ap.add_argument("--server-concurrency", type=int, default=1, help="server --concurrency")
    ap.add_argument("--threads", type=int, default=None, help="server --threads (CPU threads per model)")
    ap.add_argument("--files", nargs="*", help="audio files (default: the LibriVox clips)")
    ap.add_argument("--request-timeout", type=float, default=300.0, help="client timeout per request (s)")
    ap.add_argument("--round-timeout", type=float, default=1800.0, help="a round stops after this (s)")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import soundfile as sf

    paths = args.files or sorted(glob.glob(f"{LIBRIVOX}/*.wav"))
    if not paths:
        raise SystemExit("no audio: install pocketsphinx-testdata or pass --files")
    clips = [(Path(p).stem, Path(p).read_bytes(), sf.info(p).duration) for p in paths]
    refs = references()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env_note = os.environ.get("LLMASR_HOME", "default cache")
    print(f"server: asr={args.asr} lm={args.lm} concurrency={args.server_concurrency} ({env_note})")
    t0 = time.perf_counter()
    proc = start_server(args, port)
    rounds: list[Round] = []
    try:
        wait_ready(proc, base, args.startup_timeout)
        startup = time.perf_counter() - t0
        base_rss = rss_mb(proc.pid)
        print(f"ready in {startup:.1f} s, RSS {base_rss:.0f} MB" if base_rss else f"ready in {startup:.1f} s")
        print(
            f"load: {args.requests} requests x {args.rounds} rounds, {args.concurrency} in flight, "
            f"{len(clips)} clips ({sum(c[2] for c in clips):.1f} s of audio)"
        )
        header = (
            f"{'round':>5} {'ok':>5} {'fail':>5} {'req/s':>7} {'RTFx':>6} {'p50':>7} {'p95':>7} {'p99':>7}"
        )
        print(header + f" {'WER':>6} {'RSS MB':>7}")
        for i in range(args.rounds):
            r = asyncio.run(run_round(base, clips, refs, args))
            r.rss_mb = rss_mb(proc.pid)
            rounds.append(r)
            ok = len(r.latencies)
            fails = sum(r.failures.values()) + r.unsent
            wer = r.wer_errors / r.wer_words if r.wer_words else float("nan")
            print(
                f"{i + 1:>5} {ok:>5} {fails:>5} {ok / r.wall:>7.2f} {r.audio_seconds / r.wall:>6.1f} "
                f"{percentile(r.latencies, 50):>7.2f} {percentile(r.latencies, 95):>7.2f} "
                f"{percentile(r.latencies, 99):>7.2f} {wer:>6.1%} {r.rss_mb or float('nan'):>7.0f}"
                + (f"  failures: {r.failures}" if r.failures else "")
                + (f"  not finished in time: {r.unsent}" if r.unsent else "")
            )
            if proc.poll() is not None:
                print(f"server died (exit code {proc.returncode})")
                break
    finally:
        stop_server(proc)
    rss = [r.rss_mb for r in rounds if r.rss_mb]
    if len(rss) >= 2:
        print(f"RSS growth, last/first round: {rss[-1] / rss[0]:.3f} ({rss[0]:.0f} -> {rss[-1]:.0f} MB)")
    all_lat = [x for r in rounds for x in r.latencies]
    if all_lat:
        print(f"latency over all rounds: mean {statistics.mean(all_lat):.2f} s, max {max(all_lat):.2f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "rounds": [
                        {
                            "ok": len(r.latencies),
                            "failures": r.failures,
                            "unfinished": r.unsent,
                            "wall_s": r.wall,
                            "p50": percentile(r.latencies, 50),
                            "p95": percentile(r.latencies, 95),
                            "p99": percentile(r.latencies, 99),
                            "rss_mb": r.rss_mb,
                        }
                        for r in rounds
                    ],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
