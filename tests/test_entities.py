"""Entity database (persisted index), the speech-to-entity retriever and its training, on made-up states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmasr.components.entities.db import EntityDB
from llmasr.components.entities.retriever import EntityFinder, RetrieverConfig, SpeechEntityRetriever
from llmasr.core.errors import LlmasrError
from llmasr.data.states import cache_states, read_states
from llmasr.train.config import load_recipe
from llmasr.train.loop import fit
from llmasr.train.retriever import Example, RetrieverTask, contrastive_loss, entity_words, positives


class HashEmbedder:
    """Stand-in for the sentence embedder: a fixed random vector per text (deterministic)."""

    name = "hash"
    dim = 16

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = [np.random.default_rng(sum(map(ord, t))).standard_normal(self.dim) for t in texts]
        out = np.stack(rows).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_entity_db_index_is_persisted_and_rebuilt_when_stale(tmp_path: Path) -> None:
    path = tmp_path / "entities.txt"
    path.write_text("# drugs\nmetoprolol\napixaban\n\nmetoprolol\n", encoding="utf-8")
    emb = HashEmbedder()
    db = EntityDB.load(path, emb)
    assert db.entities == ["metoprolol", "apixaban"] and db.vectors.shape == (2, 16)
    assert (tmp_path / "entities.txt.index.npz").is_file() and emb.calls == 1
    again = EntityDB.load(path, emb)
    assert emb.calls == 1 and np.array_equal(again.vectors, db.vectors)  # read from the index
    path.write_text("metoprolol\napixaban\nwarfarin\n", encoding="utf-8")
    assert len(EntityDB.load(path, emb)) == 3 and emb.calls == 2
    (tmp_path / "empty.txt").write_text("\n# nothing\n", encoding="utf-8")
    with pytest.raises(LlmasrError, match="no entities"):
        EntityDB.load(tmp_path / "empty.txt", emb)
    with pytest.raises(LlmasrError, match="not found"):
        EntityDB.load(tmp_path / "missing.txt", emb)


def test_training_entities_and_mentions() -> None:
    words = entity_words("We met Charles at the Kubernetes team meeting yesterday.")
    assert "Charles" in words and "Kubernetes" in words and "yesterday" in words and "We" not in words
    assert "Kubernetes team" not in words  # "team" is neither long nor capitalised
    assert "meeting yesterday" in words
    said = Example(np.zeros((1, 1)), "", ["warfarin"], [], " her atrial fibrillation again ")
    other = Example(np.zeros((1, 1)), "", [], [], " her atrial fibrillation ")
    got = positives([said, other], ["atrial fibrillation", "rial", "warfarin"])
    assert got.tolist() == [[True, False, True], [True, False, False]]  # whole words, and own entities


def test_contrastive_loss_prefers_the_right_pairs() -> None:
    positive = torch.tensor([[True, False, False], [False, True, True]])
    good = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.8, 0.7]])
    bad = torch.tensor([[0.1, 0.9, 0.8], [0.9, 0.0, 0.1]])
    scale = torch.tensor(np.log(10.0), dtype=torch.float32)
    assert contrastive_loss(good, positive, scale) < contrastive_loss(bad, positive, scale)


def _states(n: int, seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float16)


def test_retriever_learns_to_find_entities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each made-up utterance carries its entity as a fixed pattern of frames; after training the
    retriever finds the entity of a new utterance with the same pattern among distractors."""
    from llmasr.data.manifest import Utterance

    rng = np.random.default_rng(0)
    names = [f"entity{i}" for i in range(12)]
    patterns = {n: rng.standard_normal((6, 8)).astype(np.float32) * 2 for n in names}

    def utterance(i: int, name: str) -> tuple[Utterance, np.ndarray]:
        noise = rng.standard_normal((30, 8)).astype(np.float32) * 0.5
        at = rng.integers(0, 24)
        noise[at : at + 6] += patterns[name]
        return Utterance(f"u{i}", "x.flac", f"some words {name} more", entities=[name]), noise.astype(
            np.float16
        )

    made = [utterance(i, names[i % 12]) for i in range(240)]

    class FakeEncoder(torch.nn.Module):
        """cache_states asks an encoder for features, states and lengths: here the states are given."""

        def __init__(self, arrays: list[np.ndarray]) -> None:
            super().__init__()
            self.arrays = arrays
            self.i = 0

        def features(self, audio: list[np.ndarray]) -> torch.Tensor:
            batch = self.arrays[self.i : self.i + len(audio)]
            self.i += len(audio)
            return torch.from_numpy(np.stack(batch).astype(np.float32))

        def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
            return features

        def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
            return torch.full_like(lengths, 30)

    import llmasr.data.states as states_mod

    original = states_mod.load_audio
    states_mod.load_audio = lambda path: np.zeros(16000, np.float32)  # type: ignore[assignment]
    try:
        cache_states(
            FakeEncoder([s for _, s in made]), [u for u, _ in made], tmp_path / "states", shard_size=100
        )
    finally:
        states_mod.load_audio = original  # type: ignore[assignment]
    cached = list(read_states(tmp_path / "states"))
    assert len(cached) == 240 and cached[5].entities == [names[5]] and cached[5].states.shape == (30, 8)
    assert sorted(p.name for p in (tmp_path / "states").glob("states-*.npz")) == [
        "states-00000.npz",
        "states-00001.npz",
        "states-00002.npz",
    ]

    recipe = load_recipe(Path("recipes/retriever_tiny.yaml"))
    recipe.model = RetrieverConfig(speech_dim=8, text_dim=16, dim=32, heads=2, embedder="hash")
    recipe.data.train = str(tmp_path / "states")
    recipe.data.dev_size = 40
    recipe.data.batch_size = 16
    recipe.stages = recipe.stages[1:]  # the made-up states have no characters to learn
    recipe.stages[0].epochs, recipe.stages[0].lr = 8, 3e-3
    recipe.run.output_dir = str(tmp_path / "run")

    monkeypatch.setattr("llmasr.components.entities.embed.TextEmbedder", lambda name: HashEmbedder())
    torch.manual_seed(0)
    summary = fit(RetrieverTask(recipe))
    assert summary.dev["dev_recall_at_5"] >= 0.9, summary

    model = SpeechEntityRetriever.load(summary.export)
    finder = EntityFinder(model, encoder=torch.nn.Identity(), embedder=HashEmbedder())
    new, states = utterance(999, "entity7")
    top = finder.top_states([states], EntityDB.build(names, HashEmbedder()), k=3)[0]
    assert finder.top_states([states], names, k=3)[0] == top  # a plain list is indexed the same way
    assert top[0].entity == "entity7" and len(top) == 3
    assert top[0].score >= top[1].score >= top[2].score
