"""Sentence embeddings of entity names with all-MiniLM-L6-v2 (bundled), loaded through transformers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llmasr.core.errors import ModelError

DEFAULT_EMBEDDER = "all-minilm-l6-v2"


class TextEmbedder:
    """Mean-pooled, L2-normalised BERT-family embeddings (what sentence-transformers computes for
    all-MiniLM-L6-v2), without needing the sentence-transformers package."""

    def __init__(self, name: str = DEFAULT_EMBEDDER, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        from llmasr.models.registry import resolve

        kind, location = resolve(name, "embed")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load text embedder '{name}': {exc}") from exc
        self.name = name
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
