"""An entity database: a text file of entities (one a line) and its embedding index, persisted beside
the file (`<file>.index.npz`) and rebuilt only when the list or the embedder changes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmasr.components.entities.embed import TextEmbedder
from llmasr.core.errors import LlmasrError
from llmasr.core.text import read_terms


def _digest(entities: list[str], embedder: str) -> str:
    return hashlib.sha256(("\n".join([embedder, *entities])).encode("utf-8")).hexdigest()


@dataclass
class EntityDB:
    entities: list[str]
    #: (N, D) float32, L2-normalised text embeddings, row i for entities[i]
    vectors: np.ndarray
    embedder: str

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def build(cls, entities: list[str], embedder: TextEmbedder) -> EntityDB:
        return cls(list(entities), embedder.embed(entities).astype(np.float32), embedder.name)

    @classmethod
    def load(cls, path: str | Path, embedder: TextEmbedder, index: str | Path | None = None) -> EntityDB:
        """The list in `path` (blank lines and # comments skipped) with its index, built if stale."""
        entities = read_terms(path)
        if not entities:
            raise LlmasrError(f"{path}: no entities in the file")
        return cls.indexed(entities, embedder, Path(index) if index else Path(f"{path}.index.npz"))

    @classmethod
    def cached(cls, entities: list[str], embedder: TextEmbedder) -> EntityDB:
        """A list from anywhere (a request's term list), indexed once under LLMASR_HOME/entity-index/."""
        from llmasr.models.registry import home

        digest = _digest(entities, embedder.name)
        return cls.indexed(entities, embedder, home() / "entity-index" / f"{digest[:24]}.npz")

    @classmethod
    def indexed(cls, entities: list[str], embedder: TextEmbedder, index_path: Path) -> EntityDB:
        """`entities` with the index at `index_path`: read when it matches, else built and written."""
        digest = _digest(entities, embedder.name)
        if index_path.is_file():
            try:
                with np.load(index_path) as saved:
                    if str(saved["digest"]) == digest:
                        return cls(entities, saved["vectors"], embedder.name)
            except (OSError, KeyError, ValueError):
                pass  # unreadable or old index: build it again
        db = cls.build(entities, embedder)
        tmp = index_path.with_name(index_path.name + ".tmp.npz")
        try:
            index_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, vectors=db.vectors, digest=np.array(digest))
            tmp.replace(index_path)
        except OSError:  # a read-only folder: work from memory
            tmp.unlink(missing_ok=True)
        return db
