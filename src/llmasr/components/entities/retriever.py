"""The speech-to-entity retriever (after ReSLM, Wang et al. 2023): which entities of a database does an
utterance mention, judged from its speech alone, before any transcript exists.

Speech side: frozen encoder states, CTC-compressed (a CTC head over characters keeps one averaged
state per emitted character, so the sequence is about as long as the spoken text), projected, mixed
over a few neighbouring characters by a convolution and contextualised by one small self-attention
layer. Entity side: the bundled sentence embedder's vector of the entity name, projected, plus a small
convolutional encoder of its spelling (sentence embeddings say what a word means, not how it sounds;
names never seen in training are matched through their letters). An utterance scores an entity by the
best cosine of any speech position with the entity (late interaction): an entity is a short stretch of
a long utterance.
Trained contrastively (`llmasr.train.retriever`): the entities an utterance mentions against the others.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from llmasr.components.entities.db import EntityDB
from llmasr.components.speech.adapters import CharCtcCompressor, length_mask
from llmasr.core.errors import ModelError


@dataclass
class RetrieverConfig:
    speech_dim: int = 384
    text_dim: int = 384
    dim: int = 256
    heads: int = 4
    vocab_size: int = 29
    blank: int = 0
    #: hidden size of the CTC head's MLP (None: linear)
    ctc_hidden: int | None = 512
    #: neighbouring speech positions mixed into each (characters)
    window: int = 5
    char_dim: int = 64
    #: the speech encoder whose states it reads, and the text embedder of the entity side
    encoder: str = "whisper-tiny.en"
    embedder: str = "all-minilm-l6-v2"


class SpeechEntityRetriever(nn.Module):
    def __init__(self, config: RetrieverConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.compressor = CharCtcCompressor(
            c.speech_dim, c.dim, c.vocab_size, c.blank, head_hidden_dim=c.ctc_hidden
        )
        self.window = nn.Conv1d(c.dim, c.dim, c.window, padding=c.window // 2)
        self.context = nn.TransformerEncoderLayer(c.dim, c.heads, 2 * c.dim, dropout=0.1, batch_first=True)
        self.text_proj = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
        self.char_embed = nn.Embedding(c.vocab_size, c.char_dim, padding_idx=c.blank)
        self.char_conv = nn.Sequential(
            nn.Conv1d(c.char_dim, c.dim, 3, padding=1), nn.GELU(), nn.Conv1d(c.dim, c.dim, 3, padding=1)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def speech(self, states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T', dim) unit vectors of the compressed speech and their (B, T') validity mask."""
        out = self.compressor(states.float(), lengths)
        mask = length_mask(out.lengths, out.embeds.shape[1])
        h = out.embeds * mask.unsqueeze(-1)
        h = h + self.window(h.transpose(1, 2)).transpose(1, 2)
        h = self.context(h, src_key_padding_mask=~mask)
        return F.normalize(h, dim=-1), mask

    def entities(self, vectors: torch.Tensor, chars: torch.Tensor) -> torch.Tensor:
        """(E, dim) unit vectors from the embedder's (E, text_dim) vectors and the (E, L) character ids
        of the names (0-padded; see `char_tensor`)."""
        spelled = self.char_conv(self.char_embed(chars).transpose(1, 2)).transpose(1, 2)
        spelled = spelled.masked_fill((chars == self.config.blank).unsqueeze(-1), -1e4).amax(1)
        return F.normalize(self.text_proj(vectors.float()) + spelled, dim=-1)

    def scores(self, frames: torch.Tensor, mask: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """(B, E) cosine of each entity with its best-matching speech position."""
        sim = torch.einsum("btd,ed->bte", frames, entities)
        return sim.masked_fill(~mask.unsqueeze(-1), -2.0).amax(1)

    def ctc_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.compressor.ctc_head(states.float())

    # ---- files -------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, str(out / "retriever.safetensors")
        )
        (out / "retriever.json").write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SpeechEntityRetriever:
        from safetensors.torch import load_file

        root = Path(folder)
        if not (root / "retriever.json").is_file():
            raise ModelError(f"{root}: not an entity retriever (retriever.json missing)")
        config = RetrieverConfig(**json.loads((root / "retriever.json").read_text(encoding="utf-8")))
        model = cls(config)
        model.load_state_dict(load_file(str(root / "retriever.safetensors")))
        return model.eval()


def char_tensor(names: Sequence[str], max_chars: int = 48) -> torch.Tensor:
    """(E, L) character ids of entity names (normalised; 0 = padding), for `entities`."""
    from llmasr.components.speech.adapters import char_ids

    ids = [char_ids(n)[:max_chars] or [0] for n in names]
    out = torch.zeros((len(ids), max(len(x) for x in ids) if ids else 1), dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x)
    return out


@dataclass
class Retrieved:
    entity: str
    score: float


class EntityFinder:
    """A trained retriever with the encoder that feeds it: audio in, the top-k entities of a database out.

    Databases are term lists; each gets its embedding index once (`EntityDB.cached`) and its projected
    entity vectors once per finder, so a long recording or a server pays for a list only the first time.
    """

    def __init__(self, retriever: SpeechEntityRetriever, encoder: nn.Module, embedder: object = None) -> None:
        self.retriever = retriever.eval()
        self.encoder = encoder
        self.embedder = embedder
        self._dbs: dict[tuple[str, ...], tuple[EntityDB, torch.Tensor]] = {}

    @classmethod
    def load(cls, retriever: str | Path = "retriever-tiny") -> EntityFinder:
        """A retriever folder or shipped retriever, with its speech encoder and text embedder."""
        from llmasr.components.entities.embed import TextEmbedder
        from llmasr.components.speech.encoders import load_encoder

        model = SpeechEntityRetriever.load(retriever_dir(retriever))
        return cls(model, load_encoder(model.config.encoder), TextEmbedder(model.config.embedder))

    def database(self, entities: Sequence[str] | EntityDB) -> tuple[EntityDB, torch.Tensor]:
        """The database of a term list (or a ready EntityDB) and its projected entity vectors."""
        key = tuple(entities.entities if isinstance(entities, EntityDB) else entities)
        if key not in self._dbs:
            if isinstance(entities, EntityDB):
                db = entities
            else:
                if self.embedder is None:
                    raise ModelError("this entity finder has no text embedder to index a term list with")
                db = EntityDB.cached(list(key), self.embedder)  # type: ignore[arg-type]
            with torch.no_grad():
                vectors = self.retriever.entities(
                    torch.from_numpy(np.asarray(db.vectors)), char_tensor(db.entities)
                )
            if len(self._dbs) >= 8:
                self._dbs.pop(next(iter(self._dbs)))
            self._dbs[key] = (db, vectors)
        return self._dbs[key]

    @torch.no_grad()
    def score_states(
        self, states: Sequence[np.ndarray | torch.Tensor], entities: Sequence[str] | EntityDB
    ) -> torch.Tensor:
        """(B, N) scores of every database entity for each utterance's encoder states (T_i, D)."""
        _, vectors = self.database(entities)
        items = [torch.as_tensor(np.asarray(s, dtype=np.float32)) for s in states]
        lengths = torch.tensor([len(x) for x in items])
        padded = nn.utils.rnn.pad_sequence(items, batch_first=True)
        frames, mask = self.retriever.speech(padded, lengths)
        return self.retriever.scores(frames, mask, vectors)

    def top_states(
        self, states: Sequence[np.ndarray | torch.Tensor], entities: Sequence[str] | EntityDB, k: int
    ) -> list[list[Retrieved]]:
        db, _ = self.database(entities)
        scores = self.score_states(states, db)
        best = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return [
            [Retrieved(db.entities[int(i)], float(v)) for v, i in zip(vals, idx)]
            for vals, idx in zip(best.values, best.indices)
        ]

    def top(
        self, audio: Sequence[np.ndarray], entities: Sequence[str] | EntityDB, k: int
    ) -> list[list[Retrieved]]:
        """Top-k entities of each 16 kHz audio segment (at most 30 s each)."""
        from llmasr.components.speech.encoders import encode_utterances

        return self.top_states(encode_utterances(self.encoder, audio), entities, k)


@functools.lru_cache(maxsize=2)
def shared_finder(name: str) -> EntityFinder:
    """One loaded finder per retriever name for the process: the shallow and deep pipelines (and the
    pipelines a comparison builds) share its encoder and embedder instead of loading them again."""
    return EntityFinder.load(name)


def retriever_dir(name_or_path: str | Path) -> Path:
    """A retriever folder, or a retriever shipped inside llmasr (`assets/adapters/<name>/`)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from llmasr.models.registry import adapter_dir

    shipped = adapter_dir(str(name_or_path))
    if (shipped / "retriever.json").is_file():
        return shipped
    raise ModelError(f"unknown entity retriever '{name_or_path}': not a folder and not a shipped retriever")
