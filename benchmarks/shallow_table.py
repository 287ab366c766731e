"""The shallow-fusion results table: every (recogniser, LM) pair with its shipped profile.

    python benchmarks/shallow_table.py --manifest work-data/real_dev.jsonl \
        --manifest work-data/synth_test.jsonl --asr whisper-tiny.en --asr whisper-base \
        --lm none --lm gemma-3-270m --lm qwen2.5-0.5b-instruct --lm en-us-3gram \
        --out docs/results-shallow.json

The first pass runs once per recogniser and utterance; each LM then re-chooses over the cached
N-best lists with the same `NbestRescorer.choose` (history carry-over included) that `llmasr transcribe`
uses, with the weights of the shipped profile `src/llmasr/profiles/<asr>+<lm>.yaml`.
`--prompts` adds the domain-prompt study: entity recall with and without the manifest's prompt and
terms, given to Whisper, to the LLM, or to both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from llmasr.core.audio import load_audio
from llmasr.core.metrics import entity_recall, word_errors
from llmasr.data.manifest import read_manifest, utterance_prompt
from llmasr.decoding.options import resolve_options
from llmasr.decoding.pipeline import Pipeline, load_recognizer, load_scorer
from llmasr.decoding.rescore import NbestRescorer, Weights


def first_passes(pipe: Pipeline, utts: list, asr_prompt: bool) -> tuple[list[list], float]:
    """First-pass segments (N-best + the terms they were decoded with) per utterance, and the seconds."""
    out, seconds = [], 0.0
    for u in utts:
        prompt, terms = utterance_prompt(u) if asr_prompt else (None, None)
        audio = load_audio(u.audio)
        t = time.perf_counter()
        segs = [s for s in pipe.first_pass(audio, prompt, terms) if s.nbest]
        seconds += time.perf_counter() - t
        out.append(segs)
    return out, seconds


def choose_all(
    utts: list, decoded: list[list], scorer: Any, weights: Weights, context_tokens: int, llm_prompt: bool
) -> tuple[list[str], float]:
    texts, seconds = [], 0.0
    for u, segs in zip(utts, decoded):
        prompt, terms = utterance_prompt(u) if llm_prompt else (None, None)
        history: list[str] = []
        t = time.perf_counter()
        for seg in segs:
            seg_terms = (seg.terms or terms or []) if llm_prompt else []
            r = NbestRescorer(scorer, weights, prompt, seg_terms, context_tokens)
            history.append(r.choose(seg.nbest, history).text.strip())
        seconds += time.perf_counter() - t
        texts.append(" ".join(history))
    return texts, seconds


def score(utts: list, texts: list[str]) -> dict[str, Any]:
    errors = words = found = total = 0
    for u, t in zip(utts, texts):
        e, n = word_errors(u.text, t)
        errors, words = errors + e, words + n
        if u.entities:
            f, k = entity_recall(u.entities, t)
            found, total = found + f, total + k
    return {"wer": errors / max(1, words), "entity_recall": found / total if total else None, "words": words}


def oracle(utts: list, nbests: list[list]) -> float:
    errors = words = 0
    for u, segs in zip(utts, nbests):
        segs = [seg.nbest for seg in segs]
        chosen = [nb[0].text for nb in segs]
        for i, nb in enumerate(segs):
            chosen[i] = min(
                (h.text for h in nb),
                key=lambda t, i=i: word_errors(u.text, " ".join([*chosen[:i], t, *chosen[i + 1 :]]))[0],
            )
        e, n = word_errors(u.text, " ".join(chosen))
        errors, words = errors + e, words + n
    return errors / max(1, words)


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per (recogniser, system), one WER column per manifest (+ entity recall where known)."""
    manifests = list(dict.fromkeys(r["manifest"] for r in results))
    keys = list(dict.fromkeys((r["asr"], r["system"], r["asr_prompt"], r["llm_prompt"]) for r in results))
    prompts = len({(k[2], k[3]) for k in keys}) > 1
    head = ["recogniser", "system"] + (["Whisper prompt", "LLM prompt"] if prompts else [])
    head += [f"WER {m.removesuffix('.jsonl')}" for m in manifests]
    with_er = [
        m for m in manifests if any(r["manifest"] == m and r["entity_recall"] is not None for r in results)
    ]
    head += [f"entity recall {m.removesuffix('.jsonl')}" for m in with_er]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for asr, system, ap, lp in keys:
        row = [asr, system] + ([str(ap), str(lp)] if prompts else [])
        cells = {
            r["manifest"]: r
            for r in results
            if (r["asr"], r["system"], r["asr_prompt"], r["llm_prompt"]) == (asr, system, ap, lp)
        }
        for m in manifests:
            r = cells.get(m)
            row.append(f"{100 * r['wer']:.2f}%" if r else "-")
        for m in with_er:
            r = cells.get(m)
            row.append(f"{r['entity_recall']:.3f}" if r and r["entity_recall"] is not None else "-")
        lines.append("| " + " | ".join(row) + " |")
        if system == "first pass":
            oracle = [f"{100 * cells[m]['oracle_wer']:.2f}%" if m in cells else "-" for m in manifests]
            lines.append(
                "| "
                + " | ".join(
                    [asr, "oracle (best of N-best)"]
                    + ([str(ap), str(lp)] if prompts else [])
                    + oracle
                    + ["-"] * len(with_er)
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", action="append", type=Path, required=True)
    ap.add_argument("--asr", action="append", default=None)
    ap.add_argument("--lm", action="append", default=None)
    ap.add_argument("--nbest", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lm-dtype", default="auto", help="auto, float32 or bfloat16")
    ap.add_argument("--max-terms", type=int, default=None, help="terms per segment (0: the whole list)")
    ap.add_argument(
        "--prompts", action="store_true", help="domain-prompt study (manifests with prompt/terms)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    asrs = args.asr or ["whisper-tiny.en"]
    lms = args.lm or ["none", "gemma-3-270m"]

    results: list[dict[str, Any]] = []
    scorers: dict[str, Any] = {}
    for asr in asrs:
        base = resolve_options(
            asr=asr, lm="none", nbest=args.nbest, threads=args.threads, max_terms=args.max_terms
        )
        pipe = Pipeline(base, recognizer=load_recognizer(asr, base))
        for manifest in args.manifest:
            utts = list(read_manifest(manifest))
            audio_s = sum(len(load_audio(u.audio)) for u in utts) / 16000
            modes = (
                [(True, True), (False, False), (True, False), (False, True)]
                if args.prompts
                else [(True, True)]
            )
            cache: dict[bool, tuple[list[list], float]] = {}
            for asr_prompt, llm_prompt in modes:
                if asr_prompt not in cache:
                    cache[asr_prompt] = first_passes(pipe, utts, asr_prompt)
                nbests, fp_s = cache[asr_prompt]
                row0 = {
                    "asr": asr,
                    "manifest": manifest.name,
                    "utterances": len(utts),
                    "audio_s": round(audio_s, 1),
                }
                row0 |= {"asr_prompt": asr_prompt, "llm_prompt": llm_prompt, "first_pass_s": round(fp_s, 2)}
                fp = score(utts, [" ".join(seg.nbest[0].text for seg in segs) for segs in nbests])
                results.append({**row0, "system": "first pass", **fp, "oracle_wer": oracle(utts, nbests)})
                for lm in lms:
                    opts = resolve_options(
                        asr=asr, lm=lm, nbest=args.nbest, threads=args.threads, lm_dtype=args.lm_dtype
                    )
                    scorer = None
                    if opts.lm and opts.weights.lm_weight:
                        scorer = scorers.get(lm) or scorers.setdefault(lm, load_scorer(lm, opts))
                    texts, lm_s = choose_all(
                        utts, nbests, scorer, opts.weights, opts.context_tokens, llm_prompt
                    )
                    name = "AM-only re-rank" if lm == "none" else f"+ {lm}"
                    results.append(
                        {**row0, "system": name, "weights": vars(opts.weights), "rescoring_s": round(lm_s, 2)}
                        | score(utts, texts)
                    )
                    r = results[-1]
                    er = r["entity_recall"]
                    print(
                        f"{asr:16} {manifest.name:18} "
                        f"asr_prompt={asr_prompt!s:5} llm_prompt={llm_prompt!s:5} "
                        f"{name:28} WER {100 * r['wer']:6.2f}%"
                        + (f"  entity recall {er:.3f}" if er is not None else ""),
                        flush=True,
                    )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
            args.out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")


if __name__ == "__main__":
    main()
