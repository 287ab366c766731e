"""A CTC recogniser: a frozen speech encoder and a character CTC head, greedy decoding (D2's first pass).

The head is the one the speech-to-entity retriever (D5) trains to compress speech (stage 1 of
`recipes/retriever_tiny.yaml`), so one trained file serves both. Its output is lowercase, unpunctuated
text with spelling slips; D2's text decoder (`--correct` with a decoder trained on such text) turns it
into formatted text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llmasr.core.errors import ModelError
from llmasr.core.types import Hypothesis, Word


def greedy_ctc(logits: torch.Tensor, length: int, vocab: Sequence[str], blank: int = 0) -> tuple[str, float]:
    """Best path of one (T, V) logit matrix: repeats merged, blanks dropped; (text, log-probability)."""
    logp = torch.log_softmax(logits[:length].float(), dim=-1)
    best, ids = logp.max(-1)
    out, prev = [], blank
    for i in ids.tolist():
        if i != blank and i != prev:
            out.append(vocab[i])
        prev = i
    return " ".join("".join(out).split()), float(best.sum())


class CtcRecognizer:
    window = 30.0

    def __init__(self, folder: str | Path, name: str = "ctc", device: str = "cpu") -> None:
        from llmasr.components.entities.retriever import SpeechEntityRetriever
        from llmasr.components.speech.adapters import CHAR_VOCAB
        from llmasr.components.speech.encoders import load_encoder

        model = SpeechEntityRetriever.load(folder)
        if model.config.vocab_size != len(CHAR_VOCAB):
            raise ModelError(
                f"{folder}: its CTC head has {model.config.vocab_size} labels, not {len(CHAR_VOCAB)}"
            )
        self.head = model.compressor.ctc_head.to(device).eval()
        self.blank = model.config.blank
        self.vocab = CHAR_VOCAB
        self.encoder = load_encoder(model.config.encoder).to(device).eval()
        self.name = name

    @torch.no_grad()
    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """One hypothesis per segment (greedy CTC has no list); `prompt` is not used by CTC."""
        from llmasr.components.speech.encoders import encode_utterances

        out = []
        for states in encode_utterances(self.encoder, list(segments)) if segments else []:
            logits = self.head(torch.from_numpy(states.astype(np.float32)))  # float16 states, as in training
            text, score = greedy_ctc(logits, len(logits), self.vocab, self.blank)
            out.append([Hypothesis(text=text, am_score=score)] if text else [])
        return out

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        return []  # no word timings: writers share a segment's time out over its text
