"""RTFx of recognisers (trained speech-LLMs, the CTC head) beside whisper-tiny.en, side by side in one run.

    # CPU: each recogniser's 1-best on the same VAD segments, batch 8 (what `llmasr transcribe` does)
    python benchmarks/deep.py --asr speechllm-ctc-tiny --asr speechllm-stack-tiny --asr speechllm-xattn-tiny \
        [--manifest work-data/real_dev.jsonl] [--limit 40] [--threads 2]

    # GPU: batched RTFx at batch sizes 1, 16 and 64
    python benchmarks/deep.py --asr speechllm-ctc-tiny --device cuda --batch-sizes 1,16,64

RTFx = audio seconds / processing seconds of `Recognizer.nbest(segments, 1)` (model loading excluded,
one warm-up batch first). Every recogniser sees the same segments (at most 30 s, from VAD). With
several batch sizes the segment list is repeated until the largest batch is filled twice, so each size
runs full batches. whisper-tiny.en (CTranslate2 int8, beam 8) runs first as the reference unless
--no-whisper. Recognisers on a trimmed encoder window (the CTC head, the shipped speech-LLMs) read each
segment of a batch over its own window, so a batch reads as its segments alone.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np

from llmasr.components.asr.registry import LoadSettings, load_recognizer
from llmasr.core import vad
from llmasr.core.audio import load_input
from llmasr.data.manifest import read_manifest

DEFAULT_AUDIO = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def rtfx(recognizer: object, segments: list[np.ndarray], batch: int, device: str) -> float:
    """Audio seconds per second of 1-best decoding, `batch` segments per call."""
    recognizer.nbest(segments[:batch], 1)  # type: ignore[attr-defined]
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(segments), batch):
        recognizer.nbest(segments[i : i + batch], 1)  # type: ignore[attr-defined]
    _sync(device)
    return sum(len(s) for s in segments) / 16000 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asr", action="append", default=[], help="recogniser (repeat)")
    ap.add_argument("--manifest", type=Path, help="JSONL manifest; default: pocketsphinx-testdata speech")
    ap.add_argument("--limit", type=int, default=40, help="at most this many files")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes")
    ap.add_argument("--no-whisper", action="store_true", help="skip the whisper-tiny.en reference")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    files = [u.audio for u in read_manifest(args.manifest)] if args.manifest else DEFAULT_AUDIO
    audios = [load_input(f)[1].samples for f in files[: args.limit]]
    segments = [a[s:e] for a in audios for s, e in vad.split(a, max_seconds=30.0)]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if len(sizes) > 1:
        segments = segments * max(1, -(-2 * max(sizes) // max(1, len(segments))))
    seconds = sum(len(s) for s in segments) / 16000
    print(f"audio: {len(audios)} files, {len(segments)} segments, {seconds:.1f} s; device {args.device}")
    names = ([] if args.no_whisper else ["whisper-tiny.en"]) + args.asr
    settings = LoadSettings(device=args.device, threads=args.threads)
    for name in names:
        t = time.perf_counter()
        recognizer = load_recognizer(name, settings)
        loaded = time.perf_counter() - t
        for bs in sizes:
            print(f"{name:28s} batch {bs:3d}  RTFx {rtfx(recognizer, segments, bs, args.device):8.2f}"
                  f"  (loaded in {loaded:.1f} s)")  # fmt: skip
        del recognizer


if __name__ == "__main__":
    main()
