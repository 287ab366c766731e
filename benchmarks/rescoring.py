"""Cost of each preset beside the recogniser's own first pass, measured side by side in one run.

    python benchmarks/rescoring.py [--manifest work-data/real_dev.jsonl] [--limit 40] [--threads 2]
                                   [--repeats 2] [--presets fast,default,accurate] [--lm gemma-3-270m]

"first pass" is whisper-tiny.en's own pick (beam 8, no LM, no re-ranking): the cost every ratio is
relative to. Each preset is the configuration `llmasr transcribe --preset NAME` runs (its recogniser(s),
N-best size, LM and tuned weights). Every configuration transcribes every file, the configurations
taking turns file by file and repeat by repeat, so drift in machine load hits all alike. Models load
before timing (reported apart); one warm-up file first. Prints seconds, RTFx (audio seconds /
processing seconds) and the ratio to the first pass: the numbers in docs/results.md.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

from llmasr.core.audio import load_input
from llmasr.data.manifest import read_manifest
from llmasr.decoding.options import PRESETS, resolve_options
from llmasr.decoding.pipeline import Pipeline
from llmasr.decoding.rescore import Weights

DEFAULT_AUDIO = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav")) + sorted(
    glob.glob("/usr/share/pocketsphinx/test/data/cards/*.wav")
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, help="JSONL manifest; default: pocketsphinx-testdata speech")
    ap.add_argument("--limit", type=int, default=40, help="at most this many files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    ap.add_argument("--lm", action="append", default=[], help="also time the default recogniser with this LM")
    args = ap.parse_args()

    files = [u.audio for u in read_manifest(args.manifest)] if args.manifest else DEFAULT_AUDIO
    audios = [load_input(f)[1].samples for f in files[: args.limit]]
    seconds = sum(len(a) for a in audios) / 16000

    first = resolve_options(lm="none", threads=args.threads)
    first.rescoring.weights = Weights()  # the recogniser's score alone: its own pick's cost
    configs = {"first pass": first}
    for name in args.presets.split(","):
        configs[name] = resolve_options(preset=name, threads=args.threads)
    for lm in args.lm:
        configs[f"+ {lm}"] = resolve_options(lm=lm, threads=args.threads)
    pipes: dict[str, Pipeline] = {}
    for name, opts in configs.items():
        t = time.perf_counter()
        pipes[name] = Pipeline(opts)
        print(
            f"load {name:>18}: {time.perf_counter() - t:6.2f} s  ({opts.decoding.asr} + {opts.rescoring.lm})"
        )
    for pipe in pipes.values():
        pipe.transcribe(audios[0])  # warm-up: first calls allocate and fill caches
    spent = dict.fromkeys(pipes, 0.0)
    for _ in range(args.repeats):
        for audio in audios:
            for name, pipe in pipes.items():
                t = time.perf_counter()
                pipe.transcribe(audio)
                spent[name] += time.perf_counter() - t
    print(f"audio: {len(audios)} files, {seconds:.1f} s; threads={args.threads}; repeats={args.repeats}")
    base = spent["first pass"]
    for name, s in spent.items():
        per_run = s / args.repeats
        print(
            f"{name:>18}: {per_run:7.2f} s per run  RTFx {seconds / per_run:7.2f}  "
            f"x{s / base:5.2f} first pass"
        )


if __name__ == "__main__":
    main()
