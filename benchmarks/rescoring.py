"""First pass alone vs first pass + LLM rescoring, on the same audio, side by side in one run.

    python benchmarks/rescoring.py [--manifest M.jsonl] [--asr whisper-tiny.en] [--lm gemma-3-270m]
                                   [--nbest 8] [--threads 2] [--repeats 3]

Both pipelines share one recogniser; each file is run by both, alternately, `--repeats` times,
so drift in machine load hits both alike. Prints RTFx (audio seconds / processing seconds,
model loading excluded and reported apart) and the ratio of processing times.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time
from pathlib import Path

from llmasr.core.audio import load_audio
from llmasr.data.manifest import read_manifest
from llmasr.decoding.options import resolve_options
from llmasr.decoding.pipeline import Pipeline, load_recognizer, load_scorer
from llmasr.decoding.rescore import Weights

DEFAULT_AUDIO = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav")) + sorted(
    glob.glob("/usr/share/pocketsphinx/test/data/cards/*.wav")
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, help="JSONL manifest; default: pocketsphinx-testdata speech")
    ap.add_argument("--asr", default="whisper-tiny.en")
    ap.add_argument("--lm", default="gemma-3-270m")
    ap.add_argument("--nbest", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lm-dtype", default="auto", help="auto, float32 or bfloat16")
    args = ap.parse_args()

    files = [u.audio for u in read_manifest(args.manifest)] if args.manifest else DEFAULT_AUDIO
    audios = [load_audio(f) for f in files]
    seconds = sum(len(a) for a in audios) / 16000

    # the recogniser's own pick: no LM, no re-ranking
    base_opts = resolve_options(
        asr=args.asr, lm="none", nbest=args.nbest, threads=args.threads, weights=Weights()
    )
    lm_opts = resolve_options(
        asr=args.asr, lm=args.lm, nbest=args.nbest, threads=args.threads, lm_dtype=args.lm_dtype
    )
    t = time.perf_counter()
    recognizer = load_recognizer(args.asr, base_opts)
    asr_load = time.perf_counter() - t
    t = time.perf_counter()
    scorer = load_scorer(args.lm, lm_opts)
    lm_load = time.perf_counter() - t
    first = Pipeline(base_opts, recognizer=recognizer)
    rescored = Pipeline(lm_opts, recognizer=recognizer, scorer=scorer)

    for a in audios[:2]:  # warm-up: first calls allocate and fill caches
        first.transcribe(a)
        rescored.transcribe(a)
    times: dict[str, list[float]] = {"first": [], "rescored": []}
    lm_share: list[float] = []
    for _ in range(args.repeats):
        for name, pipe in (("first", first), ("rescored", rescored)):
            t = time.perf_counter()
            for a in audios:
                tr = pipe.transcribe(a)
                if name == "rescored":
                    lm_share.append(tr.info["seconds"]["rescoring"])
            times[name].append(time.perf_counter() - t)

    first_s = statistics.median(times["first"])
    resc_s = statistics.median(times["rescored"])
    print(f"audio: {len(audios)} files, {seconds:.1f} s; asr={args.asr} lm={args.lm} nbest={args.nbest}")
    dtype = str(getattr(scorer, "model", scorer).dtype) if hasattr(scorer, "model") else "-"
    print(
        f"weights: {vars(lm_opts.weights)}; lm dtype {dtype}; threads={args.threads}; repeats={args.repeats}"
    )
    print(f"load: asr {asr_load:.2f} s, lm {lm_load:.2f} s (excluded)")
    print(f"first pass alone        : {first_s:7.2f} s  RTFx {seconds / first_s:7.2f}")
    print(f"first pass + rescoring  : {resc_s:7.2f} s  RTFx {seconds / resc_s:7.2f}")
    print(f"LM scoring per run      : {sum(lm_share) / args.repeats:7.2f} s")
    print(f"ratio (rescored / first): {resc_s / first_s:.2f}")


if __name__ == "__main__":
    main()
