"""D5: speech-to-entity retrieval on the domain set, with 100 and 1,000 distractor entities.

    python benchmarks/entity_retrieval.py --manifest work-data/domain.jsonl \
        --pool work-data/terms_medicine.txt --pool work-data/terms_astronomy.txt \
        --pool work-data/terms_software.txt --pool-manifest work-data/synth_test.jsonl \
        --out docs/results-entities.json

The entity database of a run holds every entity of the manifest plus N distractors drawn from the pool
(the term lists' other terms, then long or capitalised words of a text manifest). For each utterance:
recall@k of its own entities, by the trained speech retriever (audio only) and by the text-side
`TermRetriever` over whisper-tiny.en's 8-best (what `--term-retrieval text` does). Then the transcripts:
the default pipeline (or `--lm`) with the whole database as its term list, narrowed to 12 terms per
segment by each `--modes` retrieval (speech, text, both), with each utterance's domain prompt when
`--prompts` is given, giving WER and entity recall.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from llmasr.apps.evaluate import evaluate
from llmasr.components.entities.retriever import EntityFinder
from llmasr.components.speech.encoders import encode_utterances
from llmasr.core.audio import load_audio
from llmasr.core.metrics import normalize
from llmasr.core.text import read_terms
from llmasr.data.manifest import read_manifest
from llmasr.decoding.options import resolve_options
from llmasr.decoding.pipeline import Pipeline
from llmasr.decoding.terms import TermRetriever
from llmasr.train.retriever import entity_words


def distractor_pool(term_files: list[str], manifests: list[str], gold: set[str]) -> list[str]:
    seen = {normalize(g) for g in gold}
    pool: list[str] = []
    for source in [t for f in term_files for t in read_terms(f)] + [
        w for m in manifests for u in read_manifest(m) for w in entity_words(u.text)
    ]:
        key = normalize(source)
        if key and key not in seen:
            seen.add(key)
            pool.append(source)
    return pool


def recall(found: list[list[str]], gold: list[list[str]], k: int) -> float:
    hits = sum(
        sum(normalize(g) in {normalize(f) for f in row[:k]} for g in ents) for row, ents in zip(found, gold)
    )
    return hits / max(1, sum(len(g) for g in gold))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default="work-data/domain.jsonl")
    ap.add_argument("--retriever", default="retriever-tiny")
    ap.add_argument("--pool", action="append", default=[], help="term-list file of distractors")
    ap.add_argument(
        "--pool-manifest", action="append", default=[], help="manifest whose words are distractors"
    )
    ap.add_argument("--distractors", type=int, action="append", default=None)
    ap.add_argument("--max-terms", type=int, default=12)
    ap.add_argument("--no-transcripts", action="store_true", help="only the retrieval figures")
    ap.add_argument("--modes", default="speech,text,both", help="term retrievals to transcribe with")
    ap.add_argument("--prompts", action="store_true", help="also give each utterance's domain prompt")
    ap.add_argument("--lm", default=None, help="rescoring LM (default: the default pipeline's)")
    ap.add_argument("--out", default="docs/results-entities.json")
    args = ap.parse_args()
    sizes = args.distractors or [100, 1000]

    utts = list(read_manifest(args.manifest))
    gold = [list(u.entities) for u in utts]
    gold_set = sorted({e for g in gold for e in g})
    pool = distractor_pool(args.pool, args.pool_manifest, set(gold_set))
    if len(pool) < max(sizes):
        raise SystemExit(f"only {len(pool)} distractors in the pool; need {max(sizes)}")
    finder = EntityFinder.load(args.retriever)
    audio = [load_audio(u.audio) for u in utts]
    t = time.perf_counter()
    states = [encode_utterances(finder.encoder, [a])[0] for a in audio]
    encode_seconds = time.perf_counter() - t
    base = Pipeline(resolve_options(lm="none", threads=0))
    nbest = [[h.text for s in base.first_pass(a) for h in s.nbest] for a in audio]
    results: dict[str, Any] = {
        "manifest": args.manifest,
        "utterances": len(utts),
        "entities": sum(len(g) for g in gold),
        "distinct_entities": len(gold_set),
        "pool": len(pool),
        "encoder_seconds_per_utterance": round(encode_seconds / len(utts), 3),
        "runs": [],
    }
    rng = random.Random(0)
    for n in sizes:
        db_list = gold_set + rng.sample(pool, n)
        rng.shuffle(db_list)
        t = time.perf_counter()
        speech = [[r.entity for r in row] for row in finder.top_states(states, db_list, 10)]
        speech_seconds = time.perf_counter() - t
        text_retriever = TermRetriever(db_list)
        text = [text_retriever.top(nb, 10, min_similarity=0.0) for nb in nbest]
        run: dict[str, Any] = {
            "distractors": n,
            "database": len(db_list),
            "speech_retrieval_seconds": round(speech_seconds, 3),
            "recall": {
                name: {f"@{k}": round(recall(found, gold, k), 4) for k in (1, 5, 10)}
                for name, found in (("speech (D5)", speech), ("text (8-best trigrams)", text))
            },
        }
        print(json.dumps(run))
        if not args.no_transcripts:
            terms_file = Path(args.out).with_name(f"entities-{n}.txt")
            terms_file.write_text("\n".join(db_list) + "\n", encoding="utf-8")
            run["terms_file"] = str(terms_file)
            run["transcripts"] = {}
            for mode in args.modes.split(","):
                lm = {"lm": args.lm} if args.lm else {}
                opts = resolve_options(terms=db_list, max_terms=args.max_terms, term_retrieval=mode, **lm)
                pipe = Pipeline(opts)
                pipe._finder = finder
                report = evaluate(pipe, utts, use_prompts=args.prompts)
                s = report.summary()
                run["transcripts"][mode] = {k: s[k] for k in ("wer", "entity_recall", "rtfx", "failed")}
                print(mode, run["transcripts"][mode])
        results["runs"].append(run)
    Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
