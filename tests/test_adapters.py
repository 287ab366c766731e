"""Adapters: output shapes, lengths, padding invariance, and CTC compression on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from llmasr.components.speech.adapters import (
    Adapter,
    AdapterOutput,
    CharCtcCompressor,
    ConvAdapter,
    StackAdapter,
    build_adapter,
    length_mask,
)

torch.set_num_threads(1)

D, H = 6, 10


def _hidden(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random states with garbage (not zeros) in the padding, as a real encoder leaves."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), D, generator=g)
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_stack_shapes_and_lengths(k: int) -> None:
    ad = StackAdapter(D, H, stack=k)
    x, lengths = _hidden([9, 4, 1])
    out = ad(x, lengths)
    assert isinstance(out, AdapterOutput) and isinstance(ad, Adapter)
    assert out.embeds.shape == (3, -(-9 // k), H)
    assert out.lengths.tolist() == [-(-n // k) for n in (9, 4, 1)]
    assert out.ctc_logits is None


def test_stack_concatenates_frames_in_order() -> None:
    ad = StackAdapter(2, 4, stack=2)
    with torch.no_grad():
        ad.proj.weight.copy_(torch.eye(4))
        ad.proj.bias.zero_()
    x = torch.arange(10, dtype=torch.float).reshape(1, 5, 2)
    out = ad(x, torch.tensor([5]))
    assert out.embeds[0].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]  # tail padded with zeros


def test_stack_mlp_projection() -> None:
    ad = StackAdapter(D, H, stack=2, hidden_dim=16)
    out = ad(*_hidden([5]))
    assert out.embeds.shape == (1, 3, H)


@pytest.mark.parametrize("stride,kernel", [(4, None), (2, 3), (3, 5)])
def test_conv_shapes_and_lengths(stride: int, kernel: int | None) -> None:
    ad = ConvAdapter(D, H, stride=stride, kernel_size=kernel)
    x, lengths = _hidden([11, 7, 2])
    out = ad(x, lengths)
    assert out.embeds.shape == (3, -(-11 // stride), H)
    assert out.lengths.tolist() == [-(-n // stride) for n in (11, 7, 2)]


@pytest.mark.parametrize(
    "adapter",
    [StackAdapter(D, H, stack=3), ConvAdapter(D, H, stride=2, kernel_size=3), CharCtcCompressor(D, H, 5)],
    ids=["stack", "conv", "ctc"],
)
def test_padding_never_leaks(adapter: torch.nn.Module) -> None:
    """Each example's valid embeddings are the same padded in a batch as alone."""
    x, lengths = _hidden([10, 5, 7], seed=1)
    batch = adapter(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = adapter(x[i : i + 1, :n], lengths[i : i + 1])
        m = int(alone.lengths[0])
        assert int(batch.lengths[i]) == m
        torch.testing.assert_close(batch.embeds[i, :m], alone.embeds[0, :m])


def _onehot_logits(labels: list[list[int]], vocab: int = 5) -> torch.Tensor:
    """Logits whose argmax is the given label per frame (rows padded with label 1, beyond lengths)."""
    t = max(len(r) for r in labels)
    out = torch.zeros(len(labels), t, vocab)
    for b, row in enumerate(labels):
        for j in range(t):
            out[b, j, row[j] if j < len(row) else 1] = 5.0
    return out


def test_ctc_compression_merges_runs_and_drops_blanks() -> None:
    comp = CharCtcCompressor(D, H, vocab_size=5, blank=0)
    # runs: [1 1] [2] blank [2] blank blank [3 3 3]  -> 4 runs ("2 _ 2" is two tokens, as in CTC)
    labels = [[1, 1, 2, 0, 2, 0, 0, 3, 3, 3], [0, 4, 4, 0]]
    lengths = torch.tensor([10, 4])
    x = torch.arange(2 * 10 * D, dtype=torch.float).reshape(2, 10, D)
    pooled, out_lengths = comp.compress(x, _onehot_logits(labels), lengths)
    assert out_lengths.tolist() == [4, 1]
    assert pooled.shape == (2, 4, D)
    torch.testing.assert_close(pooled[0, 0], x[0, 0:2].mean(0))
    torch.testing.assert_close(pooled[0, 1], x[0, 2])
    torch.testing.assert_close(pooled[0, 2], x[0, 4])
    torch.testing.assert_close(pooled[0, 3], x[0, 7:10].mean(0))
    torch.testing.assert_close(pooled[1, 0], x[1, 1:3].mean(0))
    # frames past the length (label 1 there) are never used
    assert pooled[1, 1:].abs().sum() == 0


def test_ctc_all_blank_fallback_keeps_least_blank_frames() -> None:
    comp = CharCtcCompressor(D, H, vocab_size=5, blank=0, fallback_frames=2)
    logits = _onehot_logits([[0] * 6, [1, 0, 0]])
    # make frames 4 and 1 of row 0 the least blank (still blank argmax)
    logits[0, 4, 2] = 4.0
    logits[0, 1, 3] = 3.0
    x = torch.randn(2, 6, D)
    pooled, lengths = comp.compress(x, logits, torch.tensor([6, 3]))
    assert lengths.tolist() == [2, 1]
    torch.testing.assert_close(pooled[0, 0], x[0, 1])  # time order kept
    torch.testing.assert_close(pooled[0, 1], x[0, 4])


def test_ctc_fallback_short_and_empty_examples() -> None:
    comp = CharCtcCompressor(D, H, vocab_size=5, fallback_frames=4)
    logits = _onehot_logits([[0, 0], [0, 0]])
    pooled, lengths = comp.compress(torch.randn(2, 2, D), logits, torch.tensor([2, 0]))
    assert lengths.tolist() == [2, 0]  # at most the frames there are; an empty example stays empty


def test_ctc_forward_returns_logits_and_gradients() -> None:
    comp = CharCtcCompressor(D, H, vocab_size=7, blank=0, hidden_dim=12)
    x, lengths = _hidden([8, 3])
    x.requires_grad_(True)
    out = comp(x, lengths)
    assert out.ctc_logits is not None and out.ctc_logits.shape == (2, 8, 7)
    assert out.ctc_lengths.tolist() == [8, 3]
    assert out.embeds.shape[0] == 2 and out.embeds.shape[2] == H
    assert (out.lengths >= 1).all() and (out.lengths <= lengths).all()
    out.embeds[length_mask(out.lengths, out.embeds.shape[1])].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert comp.proj[0].weight.grad is not None


def test_registry() -> None:
    assert isinstance(build_adapter("stack", D, H, stack=2), StackAdapter)
    assert isinstance(build_adapter("conv", D, H, stride=2), ConvAdapter)
    ctc = build_adapter("char_ctc", D, H, vocab_size=9, blank=3)
    assert isinstance(ctc, CharCtcCompressor) and ctc.blank == 3
    with pytest.raises(ValueError, match="unknown adapter"):
        build_adapter("nope", D, H)
    with pytest.raises(ValueError):
        CharCtcCompressor(D, H, vocab_size=3, blank=3)
