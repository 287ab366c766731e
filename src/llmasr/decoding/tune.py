"""Search the log-linear weights on a dev manifest.

The first pass and the LM run once per utterance; the search then only re-combines cached
features, so trying thousands of weight settings costs seconds.

Three feature sets are tried: "basic" (LM weight, word bonus, agreement: an exhaustive grid; with
several recognisers also the others' score and cross-system agreement), "truncation" (basic plus the
features that see a hypothesis stopping early: shortfall, coverage, dropped confident words) and "all"
(those plus the length-normalised AM and LM scores). The larger sets are refined from the basic
optimum by coordinate ascent, MERT-style. Which one is kept is decided by k-fold cross-validation on
the dev set, so extra weights are only used when they help on utterances they were not tuned on: a
dev set of ~100 utterances is easily overfitted by ten free weights.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llmasr.components.lm.base import Scorer
from llmasr.core.errors import LlmasrError
from llmasr.core.metrics import greedy_oracle, word_errors
from llmasr.core.types import Hypothesis, Word
from llmasr.decoding.rescore import Candidate, NbestRescorer, Weights

LM_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
WORD_BONUSES = (-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
AGREEMENT_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)
#: grids of the length-normalised features (per recogniser token, per LM token, per word)
NORM_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: grids of the truncation features (shortfall and coverage in [0, 1]; dropped in words)
TRUNCATION_GRIDS: dict[str, Sequence[float]] = {
    "shortfall_weight": (0.0, 1.0, 2.0, 4.0, 8.0),
    "coverage_weight": (0.0, 1.0, 2.0, 4.0, 8.0),
    "dropped_weight": (0.0, 0.5, 1.0, 2.0, 4.0),
}
#: grids of the features of several recognisers
SYSTEM_GRIDS: dict[str, Sequence[float]] = {
    "other_am_weight": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5),
    "cross_agreement_weight": (0.0, 1.0, 2.0, 4.0, 8.0),
}
#: grid of the term-list bonus (items decoded with terms)
TERM_GRIDS: dict[str, Sequence[float]] = {"term_weight": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)}
FEATURE_SETS = ("basic", "truncation", "all", "auto")


@dataclass
class TuneItem:
    """One dev utterance: its reference and the scored candidates of each segment."""

    id: str
    reference: str
    segments: list[list[Candidate]] = field(default_factory=list)
    #: word errors of each candidate text, precomputed when the utterance has one segment
    errors: list[int] | None = None
    #: the recogniser's own pick (top of each N-best), the baseline every weight setting must beat
    first_pass: str = ""


@dataclass
class Decoded:
    """First-pass N-best lists of one dev utterance, kept so that every LM can be tried on them."""

    id: str
    reference: str
    prompt: str | None
    nbests: list[list[Hypothesis]]
    #: terms each segment was decoded with (retrieval narrows long lists per segment)
    terms: list[list[str]]


def write_decoded(
    decoded: Sequence[Decoded], path: str | Path, settings: dict[str, Any] | None = None
) -> None:
    """First-pass lists as JSON lines (what `llmasr tune --lists` keeps to tune again without decoding);
    the first line holds the `settings` they were decoded with, so that a later run can check its own."""
    from llmasr.core.files import atomic_write

    with atomic_write(path) as f:
        f.write(json.dumps({"settings": settings or {}}) + "\n")
        for d in decoded:
            f.write(json.dumps(asdict(d)) + "\n")


def read_decoded(path: str | Path) -> tuple[dict[str, Any], list[Decoded]]:
    """(settings, lists) written by `write_decoded` (settings {} for a file without them). Raises
    LlmasrError naming the file when it cannot be read."""
    out = []
    settings: dict[str, Any] = {}
    try:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            if "settings" in d:
                settings = dict(d["settings"])
                continue
            nbests = [
                [Hypothesis(**{**h, "words": [Word(**w) for w in h.get("words", [])]}) for h in nb]
                for nb in d["nbests"]
            ]
            out.append(Decoded(d["id"], d["reference"], d["prompt"], nbests, d["terms"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LlmasrError(f"{path}: not a file of first-pass lists ({exc})") from None
    return settings, out


def featurise(
    decoded: Sequence[Decoded],
    scorer: Scorer | None,
    context_tokens: int = 128,
    on_item: Callable[[TuneItem], None] | None = None,
) -> list[TuneItem]:
    """Candidates with LM scores (history: the earlier segments' first-pass text)."""
    items = []
    for d in decoded:
        item = TuneItem(id=d.id, reference=d.reference)
        history: list[str] = []
        for nbest, terms in zip(d.nbests, d.terms):
            rescorer = NbestRescorer(scorer, Weights(), d.prompt, terms, context_tokens)
            item.segments.append(rescorer.featurise(nbest, history, with_lm=scorer is not None))
            history.append(nbest[0].text)
        item.first_pass = " ".join(history)
        if len(item.segments) == 1:
            item.errors = [word_errors(d.reference, c.hypothesis.text)[0] for c in item.segments[0]]
        items.append(item)
        if on_item:
            on_item(item)
    return items


def total_errors(items: Sequence[TuneItem], w: Weights) -> tuple[int, int]:
    errors = words = 0
    for item in items:
        words += word_errors(item.reference, "")[1]
        if not item.segments:
            errors += word_errors(item.reference, "")[0]
            continue
        picks = [max(range(len(seg)), key=lambda i, seg=seg: seg[i].total(w)) for seg in item.segments]
        if item.errors is not None:
            errors += item.errors[picks[0]]
        else:
            text = " ".join(seg[i].hypothesis.text for seg, i in zip(item.segments, picks))
            errors += word_errors(item.reference, text)[0]
    return errors, words


def first_pass_wer(items: Sequence[TuneItem]) -> float:
    errors = words = 0
    for item in items:
        e, n = word_errors(item.reference, item.first_pass)
        errors, words = errors + e, words + n
    return errors / max(1, words)


def oracle_wer(items: Sequence[TuneItem]) -> float:
    """WER of the best candidates of the lists (`core.metrics.greedy_oracle`: exact for one segment, an
    upper bound of the true oracle for several): the ceiling any re-ranking of these lists could reach."""
    errors = words = 0
    for item in items:
        words += word_errors(item.reference, "")[1]
        if item.errors is not None:
            errors += min(item.errors)
            continue
        texts = [[c.hypothesis.text for c in seg] for seg in item.segments]
        errors += word_errors(item.reference, greedy_oracle(item.reference, texts))[0]
    return errors / max(1, words)


def grid_search(
    items: Sequence[TuneItem],
    lm_weights: Sequence[float] = LM_WEIGHTS,
    word_bonuses: Sequence[float] = WORD_BONUSES,
    agreement_weights: Sequence[float] = AGREEMENT_WEIGHTS,
) -> tuple[Weights, float, list[tuple[Weights, float]]]:
    """Lowest WER; ties go to the smallest weights (the simplest model that does as well)."""
    results = []
    for lm, wb, ag in itertools.product(lm_weights, word_bonuses, agreement_weights):
        w = Weights(lm_weight=lm, word_bonus=wb, agreement_weight=ag)
        errors, words = total_errors(items, w)
        results.append((w, errors / max(1, words)))
    best = min(
        results,
        key=lambda r: (round(r[1], 9), abs(r[0].lm_weight), abs(r[0].word_bonus), r[0].agreement_weight),
    )
    return best[0], best[1], results


def _simplicity(w: Weights) -> tuple[float, ...]:
    """Tie-break: smaller weights first (the simplest model that does as well)."""
    return (
        abs(w.am_norm_weight) + abs(w.lm_norm_weight) + abs(w.lm_word_weight),
        abs(w.shortfall_weight) + abs(w.coverage_weight) + abs(w.dropped_weight),
        abs(w.other_am_weight) + abs(w.cross_agreement_weight) + abs(w.term_weight),
        abs(w.lm_weight),
        abs(w.word_bonus),
        w.agreement_weight,
    )


def refine(
    items: Sequence[TuneItem],
    start: Weights,
    grids: dict[str, Sequence[float]],
    max_rounds: int = 4,
    pairs: Sequence[tuple[str, str]] = (),
) -> tuple[Weights, float]:
    """Coordinate ascent: each weight in turn takes its best grid value with the others fixed, and each
    pair in `pairs` its best pair of values (weights that trade against each other, such as the word
    bonus and a truncation penalty, where one alone never improves), round after round, until a round
    changes nothing."""
    words = max(1, total_errors(items, start)[1])
    best, best_err = start, total_errors(items, start)[0]
    moves: list[dict[str, float]] = [{name: v} for name, grid in grids.items() for v in grid]
    for a, b in pairs:
        moves += [{a: x, b: y} for x in grids[a] for y in grids[b]]
    for _ in range(max_rounds):
        changed = False
        for move in moves:
            w = replace(best, **move)
            err = total_errors(items, w)[0]
            if err < best_err or (err == best_err and _simplicity(w) < _simplicity(best)):
                changed = changed or err < best_err or w != best
                best, best_err = w, err
        if not changed:
            break
    return best, best_err / words


def several_systems(items: Sequence[TuneItem]) -> bool:
    """True when the lists come from several recognisers (some candidate has another's score)."""
    return any(c.other_am != 0.0 for it in items for seg in it.segments for c in seg)


def with_terms(items: Sequence[TuneItem]) -> bool:
    """True when some candidate spells a term of its segment's list."""
    return any(c.term_hits for it in items for seg in it.segments for c in seg)


def fit(items: Sequence[TuneItem], features: str, with_lm: bool) -> tuple[Weights, float]:
    """Tuned weights of one feature set ("basic", "truncation" or "all") on `items`, and their WER."""
    grid = {} if with_lm else {"lm_weights": (0.0,)}
    best, wer, _ = grid_search(items, **grid)
    lm_grid = {"lm_weight": LM_WEIGHTS} if with_lm else {}
    base: dict[str, Sequence[float]] = {
        **lm_grid,
        "word_bonus": WORD_BONUSES,
        "agreement_weight": AGREEMENT_WEIGHTS,
    }
    grids: dict[str, Sequence[float]] = dict(SYSTEM_GRIDS) if several_systems(items) else {}
    if with_terms(items):
        grids.update(TERM_GRIDS)
    if features in ("truncation", "all"):
        grids.update(TRUNCATION_GRIDS)
    if features == "all":
        grids["am_norm_weight"] = NORM_WEIGHTS
        if with_lm:
            grids.update(lm_norm_weight=NORM_WEIGHTS, lm_word_weight=NORM_WEIGHTS)
    if not grids:
        return best, wer
    pairs = [("word_bonus", name) for name in TRUNCATION_GRIDS if name in grids]
    return refine(items, best, {**grids, **base}, pairs=pairs)


def held_out_errors(
    items: Sequence[TuneItem], features: str, with_lm: bool, folds: int = 5
) -> list[tuple[int, int]]:
    """(word errors, reference words) of each utterance under weights tuned without its fold
    (utterance i is in fold i % folds): k-fold cross-validation, kept per utterance so that it can
    be broken down (by speech style, say)."""
    out: list[tuple[int, int]] = [(0, 0)] * len(items)
    for k in range(min(folds, len(items))):  # a fold without utterances holds nothing out
        train = [it for i, it in enumerate(items) if i % folds != k]
        if not train:
            continue
        w, _ = fit(train, features, with_lm)
        for i, it in enumerate(items):
            if i % folds == k:
                out[i] = total_errors([it], w)
    return out


@dataclass
class TuneResult:
    weights: Weights
    wer: float
    features: str
    #: cross-validated WER of each feature set tried
    cv_wer: dict[str, float]
    am_only_wer: float
    #: held-out (errors, words) of each utterance under the chosen feature set (empty without folds)
    held_out: list[tuple[int, int]] = field(default_factory=list)


def tune_weights(
    items: Sequence[TuneItem], *, with_lm: bool, features: str = "auto", folds: int = 5
) -> TuneResult:
    """Weights for a dev set: `features` basic, all, or auto (the set with the lower cross-validated
    WER; basic on a tie). The chosen set is then tuned on every dev utterance."""
    if features not in FEATURE_SETS:
        raise LlmasrError(f"unknown feature set '{features}': choose one of {', '.join(FEATURE_SETS)}")
    if features == "auto" and folds < 2:
        raise LlmasrError("features 'auto' chooses by cross-validation: it needs at least 2 folds")
    tried = ("basic", "truncation", "all") if features == "auto" else (features,)
    held = {f: held_out_errors(items, f, with_lm, folds) for f in tried} if folds > 1 else {}
    cv = {f: sum(e for e, _ in p) / max(1, sum(n for _, n in p)) for f, p in held.items()}
    chosen = features
    if features == "auto":
        # the smallest set within rounding of the best (tried is ordered by size)
        chosen = min(tried, key=lambda f: (round(cv[f], 9), tried.index(f)))
    w, wer = fit(items, chosen, with_lm)
    am_only = total_errors(items, Weights())
    return TuneResult(w, wer, chosen, cv, am_only[0] / max(1, am_only[1]), held.get(chosen, []))
