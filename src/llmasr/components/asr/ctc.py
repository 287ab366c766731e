"""A CTC recogniser: a frozen speech encoder and a token CTC head over an LLM's vocabulary.

The head (llmasr.components.speech.ctc_head) is the speech-LLMs' alignment stage; its greedy output (or an
N-best list from prefix beam search) is a transcript on its own: lowercase, unpunctuated, numbers as
words (what the audio says). Its greedy output is the first pass of CTC + LM correction (`--asr
whisper-tiny.en-ctc --lm none --nbest 1 --correct --corrector smollm2-135m-d2-decoder`), and its emission
frames time words.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from llmasr.core.types import Hypothesis, Word


def greedy_ctc(logits: torch.Tensor, length: int, vocab: Sequence[str], blank: int = 0) -> tuple[str, float]:
    """Best path of one (T, V) logit matrix over a character vocabulary: repeats merged, blanks dropped;
    (text, log-probability). (The entity retriever's character head reads its output this way.)"""
    logp = torch.log_softmax(logits[:length].float(), dim=-1)
    best, ids = logp.max(-1)
    out, prev = [], blank
    for i in ids.tolist():
        if i != blank and i != prev:
            out.append(vocab[i])
        prev = i
    return " ".join("".join(out).split()), float(best.sum())


class CtcRecognizer:
    """CTC over the LLM's tokens: greedy for one hypothesis per segment, prefix beam search for an
    N-best list (up to `max_nbest`); word times from the emissions.

    `am_score` (nats): for the greedy pick, the sum of the log-probabilities of the frames that emit its
    tokens (blank and repeat frames left out: a confidence, not a path probability); for a beam's, the
    sequence's log-likelihood summed over the alignments the search kept. The head's config names its
    encoder (and the window it was trained with) and the LLM whose vocabulary and embeddings it uses.
    """

    window = 30.0
    accepts_prompt = False
    #: the longest list `nbest` gives (its beam is twice the list)
    max_nbest = 8

    def __init__(self, folder: str | Path, name: str = "ctc", device: str = "cpu") -> None:
        import json

        from llmasr.components.speech.ctc_head import CONFIG, lm_vocabulary, load_head
        from llmasr.components.speech.encoders import load_encoder

        config = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
        embeddings, self.tokenizer = lm_vocabulary(config["lm"])
        self.head = load_head(str(folder), embeddings).to(device).eval()
        self.encoder = load_encoder(config["encoder"], trim_tail=config.get("trim_tail")).to(device).eval()
        self.name = name

    @torch.no_grad()
    def _hidden(self, segments: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's states of the segments ((B, T', d), lengths (B,)): the encoder, then the trunk."""
        states, frames = self.encoder.encode([np.asarray(a, dtype=np.float32) for a in segments])
        return self.head.hidden(states, torch.tensor(frames, device=states.device))

    @torch.no_grad()
    def _paths(self, segments: Sequence[np.ndarray]) -> list[list[tuple[int, int, float]]]:
        hidden, lengths = self._hidden(segments)
        return self.head.greedy(self.head.logits(hidden), lengths)

    @torch.no_grad()
    def nbest(
        self, segments: Sequence[np.ndarray], n: int, prompt: str | None = None
    ) -> list[list[Hypothesis]]:
        """Up to min(n, max_nbest) hypotheses per segment, best first: the greedy path for n = 1, else
        CTC prefix beam search (`TokenCtcHead.beam_search`, twice as wide) with token sequences that
        decode to the same text merged (their probabilities summed: one text, several tokenisations);
        texts that decode to nothing are dropped. `prompt` is not used by CTC."""
        if not len(segments):
            return []
        n = min(n, self.max_nbest)
        if n <= 1:
            paths = self._paths(segments)
            lists = [[([tok for tok, _, _ in path], sum(lp for _, _, lp in path))] for path in paths]
        else:
            hidden, lengths = self._hidden(segments)
            lists = self.head.beam_search(self.head.logits(hidden), lengths, beam=2 * n)
        out = []
        for ranked in lists:
            texts: dict[str, Hypothesis] = {}
            for ids, score in ranked:
                text = self.tokenizer.decode(ids).strip()
                if not text:
                    continue
                if text in texts:
                    same = texts[text]
                    same.am_score = float(np.logaddexp(same.am_score, score))
                else:
                    texts[text] = Hypothesis(text=text, am_score=float(score), tokens=list(ids))
            out.append(sorted(texts.values(), key=lambda h: -h.am_score)[:n])
        return out

    @torch.no_grad()
    def score_texts(self, audio: np.ndarray, texts: Sequence[str], prompt: str | None = None) -> list[float]:
        """CTC log-likelihood (nats) of each text's normalised tokens (`ctc_targets`) given a 16 kHz mono
        segment: the sum over every alignment, over the whole vocabulary
        (`TokenCtcHead.score_sequences`), so the head can judge another recogniser's hypotheses
        (`--asr A,whisper-tiny.en-ctc`: joint CTC/attention rescoring). A text that normalises to
        nothing scores as all blanks; one that no alignment fits gets a low, finite floor. `prompt`
        is not used."""
        from llmasr.components.speech.ctc_head import ctc_targets

        if not texts:
            return []
        hidden, lengths = self._hidden([audio])
        return self.head.score_sequences(hidden, lengths, [ctc_targets(self.tokenizer, t) for t in texts])

    def align(self, audio: np.ndarray, hypothesis: Hypothesis) -> list[Word]:
        """Word times from the head's emission frames (see llmasr.components.asr.speechllm)."""
        from llmasr.components.asr.speechllm import head_words, match_times
        from llmasr.core.audio import SAMPLE_RATE

        words = hypothesis.text.split()
        if not words:
            return []
        path = self._paths([audio])[0]
        spoken = head_words(self.tokenizer, path, self.head.frame_seconds(self.encoder.frames_per_second))
        return match_times(words, spoken, len(audio) / SAMPLE_RATE)
