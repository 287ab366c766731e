"""Sequence scorers by kind: the one place an `--lm` name becomes a loaded `Scorer`.

`llmasr.models.registry.resolve(name, "lm")` gives (kind, location); SCORERS maps the kind to its loader.
Adding a scorer is one module with `score` and `count_tokens` (llmasr.components.lm.base.Scorer) plus
one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmasr.components.lm.base import Scorer
from llmasr.core.errors import ModelError


def _ngram(location: str, name: str, device: str, dtype: str, threads: int) -> Scorer:
    from llmasr.components.lm.ngram import NgramScorer

    return NgramScorer(location, name=name)


def _causal(location: str, name: str, device: str, dtype: str, threads: int) -> Scorer:
    from llmasr.components.lm.causal import CausalLMScorer

    return CausalLMScorer(location, name=name, device=device, dtype=dtype, threads=threads)


SCORERS: dict[str, Callable[[str, str, str, str, int], Scorer]] = {"ngram": _ngram, "causal-lm": _causal}


def load_scorer(
    name: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    threads: int = 0,
    log: Callable[[str], None] | Any = None,
) -> Scorer:
    """The scorer `name` resolves to (a named model, a folder, a HF id). Raises ModelError naming it."""
    from llmasr.models.registry import resolve

    kind, location = resolve(name, "lm", log=log)
    loader = SCORERS.get(kind)
    if loader is None:
        raise ModelError(f"'{name}' is a {kind} model, not a language model that can score text")
    return loader(location, name, device, dtype, threads)
