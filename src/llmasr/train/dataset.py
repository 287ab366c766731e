"""Manifest -> duration-bucketed SpeechBatch micro-batches, loaded lazily.

Only the manifest's metadata (paths, texts, durations) is held in memory; audio is decoded and
featurised batch by batch, in DataLoader workers when `num_workers` > 0. Feature lengths are audio
sample counts (the encoders' `output_lengths` take samples), so the encoder knows how much of each padded
row is speech.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from llmasr.components.speech.adapters import char_ids
from llmasr.components.speech.speechllm import SpeechBatch
from llmasr.core.audio import load_audio
from llmasr.data.manifest import Utterance, bucket_by_duration, filter_duration, read_manifest

Featurize = Callable[[Sequence[np.ndarray]], torch.Tensor]


def load_utterances(
    manifest: str | Path, min_duration: float = 0.0, max_duration: float = float("inf")
) -> list[Utterance]:
    """Utterance records (no audio) within the duration limits, in manifest order."""
    return filter_duration(read_manifest(manifest), min_duration, max_duration)


def utterance_terms(utt: Utterance) -> list[str] | None:
    """The utterance's term list, inline or from its file (the one reader evaluation uses too)."""
    from llmasr.data.manifest import utterance_prompt

    return utterance_prompt(utt)[1]


def collate(
    utts: Sequence[Utterance], featurize: Featurize, *, with_ctc: bool = False, use_prompts: bool = True
) -> SpeechBatch:
    """Load the batch's audio and build a SpeechBatch (features, sample lengths, texts, prompts, CTC)."""
    audio = [load_audio(u.audio, max_duration=None, name=u.id, allow_silent=True) for u in utts]
    batch = SpeechBatch(
        features=featurize(audio),
        feature_lengths=torch.tensor([len(a) for a in audio], dtype=torch.long),
        texts=[u.text for u in utts],
    )
    if use_prompts:
        batch.domains = [u.prompt for u in utts]
        batch.terms = [utterance_terms(u) for u in utts]
    if with_ctc:
        ids = [char_ids(u.text) for u in utts]
        batch.ctc_target_lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        batch.ctc_targets = torch.zeros((len(ids), max(1, *(len(x) for x in ids))), dtype=torch.long)
        for i, x in enumerate(ids):
            batch.ctc_targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return batch


def epoch_batches(
    utts: Sequence[Utterance],
    batch_seconds: float,
    *,
    seed: int,
    epoch: int,
    num_buckets: int = 10,
    rank: int = 0,
    world: int = 1,
) -> list[list[Utterance]]:
    """This process's micro-batches for one epoch: a new bucketed order per epoch (seed + epoch).

    With several processes every one gets the same number of batches (the tail is dropped), so
    they stay in step through gradient synchronisation.
    """
    batches = list(
        bucket_by_duration(
            utts, batch_seconds, num_buckets=num_buckets, seed=seed + epoch, drop_oversize=True
        )
    )
    per_rank = len(batches) // world
    return batches[rank : per_rank * world : world]


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole micro-batches (so workers featurise in parallel)."""

    def __init__(
        self,
        batches: Sequence[Sequence[Utterance]],
        featurize: Featurize,
        *,
        with_ctc: bool = False,
        use_prompts: bool = True,
    ) -> None:
        self.batches = list(batches)
        self.featurize = featurize
        self.with_ctc = with_ctc
        self.use_prompts = use_prompts

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> SpeechBatch:
        return collate(
            self.batches[index], self.featurize, with_ctc=self.with_ctc, use_prompts=self.use_prompts
        )


def _as_is(item: SpeechBatch) -> SpeechBatch:
    return item


def batch_loader(dataset: BatchDataset, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Items in order (the bucketing already shuffled), prefetched by `num_workers` processes."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_as_is,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def batch_to(batch: SpeechBatch, device: torch.device | str) -> SpeechBatch:
    """Tensors of the batch moved to `device` (lists stay as they are)."""
    out = SpeechBatch(**vars(batch))
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.to(device, non_blocking=True))
    return out
