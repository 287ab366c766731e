"""The encoder-state cache: resuming, and growing with its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import llmasr.data.states as states_mod
from llmasr.data.manifest import Utterance
from llmasr.data.states import cache_states, read_states


class CountingEncoder(torch.nn.Module):
    """States made from the audio itself (one frame per sample, dim 2); counts the inputs it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def features(self, audio: list[np.ndarray]) -> torch.Tensor:
        longest = max(len(a) for a in audio)
        return torch.from_numpy(np.stack([np.pad(a, (0, longest - len(a))) for a in audio]))

    def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        self.encoded += features.shape[0]
        return torch.stack([features, -features], dim=-1)

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_samples


def _utts(n: int) -> list[Utterance]:
    return [Utterance(f"u{i}", f"{i + 1}.flac", f"text {i}", duration=float(i + 1)) for i in range(n)]


def test_a_grown_manifest_fills_the_partial_shard_and_keeps_the_full_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synthesis that resumed grows its manifest: the states cache keeps the finished shards and
    recomputes the last, partial one (before this, that shard was kept and its new utterances lost)."""
    # the audio of "k.flac" is k samples of value k
    monkeypatch.setattr(
        states_mod,
        "load_audio",
        lambda path: np.full(int(Path(path).stem), float(Path(path).stem), np.float32),
    )
    enc = CountingEncoder()
    cache_states(enc, _utts(5), tmp_path, shard_size=3)
    assert enc.encoded == 5 and [u.id for u in read_states(tmp_path)] == [f"u{i}" for i in range(5)]
    cache_states(enc, _utts(5), tmp_path, shard_size=3)  # nothing new: nothing encoded
    assert enc.encoded == 5
    cache_states(enc, _utts(8), tmp_path, shard_size=3)
    assert enc.encoded == 5 + 3 + 2  # the second shard (2 -> 3 utterances) and the third
    got = {u.id: u for u in read_states(tmp_path)}
    assert sorted(got) == sorted(f"u{i}" for i in range(8))
    for i in range(8):
        assert got[f"u{i}"].states.shape == (i + 1, 2) and float(got[f"u{i}"].states[0, 0]) == i + 1
        assert got[f"u{i}"].text == f"text {i}"
