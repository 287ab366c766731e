"""D2's pieces: greedy CTC decoding, CTC-like text slips for text-only training pairs."""

from __future__ import annotations

import json
import random

import torch

from llmasr.components.asr.ctc import greedy_ctc
from llmasr.core.metrics import normalize, word_errors
from llmasr.data.ctc_pairs import ctc_like, text_pairs

VOCAB = ("<blank>", "a", "b", " ")


def _onehot(ids: list[int]) -> torch.Tensor:
    logits = torch.full((len(ids), len(VOCAB)), -10.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 10.0
    return logits


def test_greedy_ctc_merges_repeats_and_drops_blanks() -> None:
    # a a _ a b b _ _ (space) b, then padding that the length cuts off
    ids = [1, 1, 0, 1, 2, 2, 0, 3, 2, 1, 1]
    text, score = greedy_ctc(_onehot(ids), 9, VOCAB)
    assert text == "aab b"
    assert -0.01 < score <= 0.0
    assert greedy_ctc(_onehot([0, 0, 3, 0]), 4, VOCAB)[0] == ""  # spaces alone are no text


def test_ctc_like_slips_at_about_the_rate() -> None:
    sentence = "The patient was started on Metoprolol for rate control, twice a day."
    rng = random.Random(1)
    assert ctc_like(sentence, 0.0, rng) == normalize(sentence)
    noisy = [ctc_like(sentence, 0.1, rng) for _ in range(200)]
    assert all(n == n.lower() and "," not in n for n in noisy)
    chars = len(normalize(sentence))
    changed = sum(sum(a != b for a, b in zip(n, normalize(sentence))) > 0 for n in noisy)
    assert changed > 150  # at 10% of ~65 characters nearly every sentence gets a slip
    mean_wer = sum(word_errors(sentence, n)[0] for n in noisy) / (200 * len(sentence.split()))
    assert 0.1 < mean_wer < 0.8, (mean_wer, chars)


def test_text_pairs_are_nbest_records() -> None:
    lines = list(text_pairs([("u1", "Hello there, Charles."), ("u2", "...")], 0.05, seed=3))
    assert len(lines) == 1  # a sentence that normalises to nothing gives no pair
    rec = json.loads(lines[0])
    assert rec["id"] == "text-u1" and rec["reference"] == "Hello there, Charles."
    assert len(rec["nbest"]) == 1 and rec["nbest"][0]["text"] == rec["nbest"][0]["text"].lower()
