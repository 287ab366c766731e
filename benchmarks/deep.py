"""RTFx of deep-fusion inference (a trained SpeechLLM checkpoint) beside whisper-tiny.en's first pass.

    # CPU: the deep model and Whisper's first pass (greedy, 1-best) on the same audio, one run each
    python benchmarks/deep.py --model runs/d3_stack_gemma [--manifest M.jsonl] [--limit 20] [--threads 2]

    # GPU: batched RTFx of the deep model at batch sizes 1, 16 and 64 (bf16 when the recipe trained in it)
    python benchmarks/deep.py --model runs/d3_stack_gemma --device cuda --manifest work-data/synth_dev.jsonl

RTFx = audio seconds / processing seconds (model loading excluded, reported apart; one warm-up call
first). Both systems see the same VAD segments (at most 30 s). On CUDA the segment list is repeated
until the largest batch size is filled at least twice, so every batch size runs full batches; greedy
decoding, `max_new_tokens` from the recipe. The GPU path has not been run in the CPU-only session
that wrote it.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np
import torch

from llmasr.core import vad
from llmasr.core.audio import load_audio
from llmasr.data.manifest import read_manifest
from llmasr.decoding.deep_pipeline import DeepRecognizer

DEFAULT_AUDIO = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))


def _segments(audios: list[np.ndarray]) -> list[np.ndarray]:
    return [a[s:e] for a in audios for s, e in vad.split(a, max_seconds=30.0)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="checkpoint folder or run folder")
    ap.add_argument("--manifest", type=Path, help="JSONL manifest; default: pocketsphinx-testdata speech")
    ap.add_argument("--limit", type=int, default=20, help="at most this many files")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,16,64", help="CUDA batch sizes (comma separated)")
    ap.add_argument("--no-whisper", action="store_true", help="skip the whisper-tiny.en first pass")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    files = [u.audio for u in read_manifest(args.manifest)] if args.manifest else DEFAULT_AUDIO
    audios = [load_audio(f) for f in files[: args.limit]]
    segments = _segments(audios)
    seconds = sum(len(s) for s in segments) / 16000
    print(f"audio: {len(audios)} files, {len(segments)} segments, {seconds:.1f} s; device {args.device}")

    t = time.perf_counter()
    deep = DeepRecognizer.load(args.model, device=args.device)
    print(f"deep model {deep.name}: loaded in {time.perf_counter() - t:.1f} s; bf16={deep.bf16}")
    rows: list[tuple[str, float]] = []
    if args.device.startswith("cuda"):
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        work = segments * max(1, -(-2 * max(sizes) // max(1, len(segments))))
        work_seconds = sum(len(s) for s in work) / 16000
        for bs in sizes:
            deep.batch_size = bs
            deep.transcribe(work[:bs])  # warm-up (kernels, allocator)
            _sync(args.device)
            t = time.perf_counter()
            deep.transcribe(work)
            _sync(args.device)
            rows.append((f"deep, batch {bs}", work_seconds / (time.perf_counter() - t)))
    else:
        deep.transcribe(segments[:1])
        t = time.perf_counter()
        deep.transcribe(segments)
        rows.append((f"deep, batch {deep.batch_size}", seconds / (time.perf_counter() - t)))
    if not args.no_whisper:
        from llmasr.decoding.options import resolve_options
        from llmasr.decoding.pipeline import load_recognizer

        opts = resolve_options(asr="whisper-tiny.en", lm="none", threads=args.threads, device=args.device)
        whisper = load_recognizer("whisper-tiny.en", opts)
        whisper.nbest(segments[:1], 1)
        t = time.perf_counter()
        for i in range(0, len(segments), opts.batch_size):
            whisper.nbest(segments[i : i + opts.batch_size], 1)
        rows.append(
            (
                f"whisper-tiny.en first pass (1-best, batch {opts.batch_size})",
                seconds / (time.perf_counter() - t),
            )
        )
    for name, rtfx in rows:
        print(f"{name:55s} RTFx {rtfx:8.2f}")


if __name__ == "__main__":
    main()
