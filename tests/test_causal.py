"""CausalLMScorer on tiny randomly initialised causal LMs built offline (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmasr.components.lm.base import Scorer
from llmasr.components.lm.causal import CausalLMScorer
from llmasr.core.errors import ModelError
from tests.tiny import SPECIALS, save_tiny_lm, word_tokenizer

WORDS = (
    "the a cat dog sat on mat ran to park in house big small red blue quick brown fox jumps over lazy "
    "hello world meeting notes budget review kubernetes deploy cluster speech model"
).split()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), WORDS, unused_ids=4, sharpen=8.0)


@pytest.fixture(scope="module")
def scorer(llama_dir: Path) -> CausalLMScorer:
    return CausalLMScorer(str(llama_dir), name="tiny-llama", threads=1, dtype="float32")


def naive_scores(scorer: CausalLMScorer, texts: list[str], context: str = "") -> list[float]:
    """One full forward pass per hypothesis over [start] + context + hypothesis, no cache, no padding."""
    tok = scorer.tokenizer
    model = scorer.model
    ctx = tok.encode(context.rstrip(), add_special_tokens=False) if context else []
    ctx = ctx[-(scorer.max_context_tokens - 1) :] if scorer.max_context_tokens > 1 else []
    prefix = [scorer._start, *ctx]
    out = []
    with torch.no_grad():
        for t in texts:
            hyp = tok.encode((" " + t.strip()) if context.strip() else t.strip(), add_special_tokens=False)
            ids = torch.tensor([prefix + hyp])
            logits = model(input_ids=ids).logits[0].float()  # the model applies its own soft-capping
            logp = torch.log_softmax(logits, dim=-1)
            total = 0.0
            for j, token in enumerate(hyp):
                total += float(logp[len(prefix) - 1 + j, token])
            out.append(total)
    return out


HYPS = [
    "the cat sat on the mat",
    "dog",
    "the quick brown fox jumps over the lazy dog",
    "a big red house",
    "hello world",
]


def test_protocol_and_name(scorer: CausalLMScorer) -> None:
    assert isinstance(scorer, Scorer)
    assert scorer.name == "tiny-llama"
    assert scorer._start == 1 and scorer._pad == 0


def test_count_tokens(scorer: CausalLMScorer) -> None:
    assert scorer.count_tokens("the cat sat") == 3
    assert scorer.count_tokens("") == 0
    assert scorer.count_tokens("the unknownword cat") == 3  # <unk> counts as one


def test_empty_list(scorer: CausalLMScorer) -> None:
    assert scorer.score([]) == []
    assert scorer.score([], "some context") == []


def test_batched_equals_naive_without_context(scorer: CausalLMScorer) -> None:
    got = scorer.score(HYPS)
    want = naive_scores(scorer, HYPS)
    assert len(got) == len(HYPS)
    assert got == pytest.approx(want, abs=1e-4)
    assert all(s < 0 for s in got)


def test_batched_equals_naive_with_context(scorer: CausalLMScorer) -> None:
    context = "meeting notes budget review the cluster"
    got = scorer.score(HYPS, context)
    assert got == pytest.approx(naive_scores(scorer, HYPS, context), abs=1e-4)


def test_single_one_token_hypotheses(scorer: CausalLMScorer) -> None:
    # only one-token hypotheses: the batched pass is skipped altogether
    got = scorer.score(["dog", "cat"], "the big")
    assert got == pytest.approx(naive_scores(scorer, ["dog", "cat"], "the big"), abs=1e-4)
    assert got[0] != pytest.approx(got[1], abs=1e-6)


def test_one_hypothesis_alone_matches_its_score_in_a_batch(scorer: CausalLMScorer) -> None:
    batch = scorer.score(HYPS, "hello")
    for i, h in enumerate(HYPS):
        assert scorer.score([h], "hello")[0] == pytest.approx(batch[i], abs=1e-4)


def test_context_changes_scores(scorer: CausalLMScorer) -> None:
    a = scorer.score(HYPS, "kubernetes deploy cluster")
    b = scorer.score(HYPS, "the small blue park")
    assert all(abs(x - y) > 1e-4 for x, y in zip(a, b))
    c = scorer.score(HYPS)
    assert all(abs(x - y) > 1e-4 for x, y in zip(a, c))


def test_context_trailing_space_is_ignored(scorer: CausalLMScorer) -> None:
    assert scorer.score(HYPS, "the cat  ") == pytest.approx(scorer.score(HYPS, "the cat"), abs=1e-5)


def test_context_cache_reused_and_refreshed(llama_dir: Path) -> None:
    s = CausalLMScorer(str(llama_dir), threads=1, dtype="float32")
    calls = []
    base = s.model.base_model
    original = base.forward

    def counting_forward(*args, **kwargs):
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            calls.append(1)  # a context pass: the hypothesis batch always continues a cache
        return original(*args, **kwargs)

    base.forward = counting_forward
    ctx_a, ctx_b = "meeting notes budget", "the lazy dog ran to the park"
    want_a = naive_scores(s, HYPS, ctx_a)
    want_b = naive_scores(s, HYPS, ctx_b)
    calls.clear()

    first = s.score(HYPS, ctx_a)
    assert len(calls) == 1
    cached = s._cached
    again = s.score(HYPS[::-1], ctx_a)
    assert len(calls) == 1, "same context: the cached context pass must be reused"
    assert s._cached is cached
    assert again[::-1] == pytest.approx(first, abs=1e-5)

    for _ in range(2):  # switch back and forth: each switch refreshes, scores stay right
        assert s.score(HYPS, ctx_b) == pytest.approx(want_b, abs=1e-4)
        assert s.score(HYPS, ctx_a) == pytest.approx(want_a, abs=1e-4)
    assert len(calls) == 5
    assert first == pytest.approx(want_a, abs=1e-4)


def test_long_context_is_trimmed_to_most_recent_tokens(llama_dir: Path) -> None:
    s = CausalLMScorer(str(llama_dir), threads=1, max_context_tokens=4, dtype="float32")
    long_ctx = "meeting notes budget review the big red"
    short_ctx = "the big red"  # the 3 most recent tokens
    got = s.score(HYPS, long_ctx)
    assert got == pytest.approx(naive_scores(s, HYPS, short_ctx), abs=1e-4)
    assert got == pytest.approx(s.score(HYPS, short_ctx), abs=1e-5)


def test_missing_model_folder_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot load causal LM"):
        CausalLMScorer(str(tmp_path / "no-such-model"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        config = Gemma3TextConfig(
            vocab_size=len(SPECIALS) + len(WORDS) + 4,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=4,  # shorter than context + hypothesis: the sliding layer really slides
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        torch.manual_seed(1)
        model = Gemma3ForCausalLM(config)
    except Exception as exc:  # pragma: no cover - depends on the transformers version
        pytest.skip(f"tiny Gemma3 cannot be built here: {exc}")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    model.save_pretrained(folder)
    word_tokenizer(WORDS).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("context", ["", "meeting notes budget review the big red cluster"])
def test_gemma3_batched_equals_naive(gemma_dir: Path, context: str) -> None:
    s = CausalLMScorer(str(gemma_dir), threads=1, dtype="float32")
    assert s.score(HYPS, context) == pytest.approx(naive_scores(s, HYPS, context), abs=1e-4)


def test_soft_capped_logits_are_capped_once(gemma_dir: Path, tmp_path: Path) -> None:
    """A model with final_logit_softcapping (Gemma 2 style) must score like its own forward pass."""
    from transformers import Gemma3ForCausalLM

    model = Gemma3ForCausalLM.from_pretrained(gemma_dir)
    model.config.final_logit_softcapping = 0.5  # small, so that capping twice would show
    model.save_pretrained(tmp_path)
    word_tokenizer(WORDS).save_pretrained(tmp_path)
    s = CausalLMScorer(str(tmp_path), threads=1, dtype="float32")
    assert s.model.config.final_logit_softcapping == 0.5
    for context in ("", "the big red"):
        assert s.score(HYPS, context) == pytest.approx(naive_scores(s, HYPS, context), abs=1e-4)


def test_dtype_choice(llama_dir: Path) -> None:
    from llmasr.components.lm.causal import pick_dtype

    assert pick_dtype("float32", "cpu") == torch.float32
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ModelError, match="unknown dtype 'float8'"):
        pick_dtype("float8", "cpu")
    s = CausalLMScorer(str(llama_dir), threads=1, dtype="bfloat16")
    assert s.model.dtype == torch.bfloat16
    exact = CausalLMScorer(str(llama_dir), threads=1, dtype="float32")
    # bf16 keeps the ranking of clearly different hypotheses and stays close in value
    lo, hi = s.score(HYPS), exact.score(HYPS)
    assert lo == pytest.approx(hi, rel=0.05)
