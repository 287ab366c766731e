"""D1 gated cross-attention: zero gates give the bare LLM; training opens them; batching, beams, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from llmasr.components.speech.xattn import XAttnFusion
from llmasr.train.config import RecipeError, load_recipe
from tests.test_speechllm import TEXTS, WORDS, _batch, _model, _train
from tests.tiny import save_tiny_lm, tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), WORDS, unused_ids=2, lowercase=True)


@pytest.fixture(scope="module")
def tied_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tied-llama"), WORDS, unused_ids=2, lowercase=True, tie=True)


def test_zero_gate_model_equals_the_bare_llm() -> None:
    llm = tiny_llama(40).eval()
    ids = torch.randint(4, 40, (2, 7))
    with torch.no_grad():
        bare = llm(input_ids=ids).logits
        fusion = XAttnFusion(llm, every=1, heads=4)
        assert fusion.positions == [0, 1] and len(fusion.blocks) == 2
        fusion.set_memory(torch.randn(2, 5, 32), torch.tensor([5, 3]))
        assert torch.equal(llm(input_ids=ids).logits, bare)
        for block in fusion.blocks:  # open the gates: now the speech changes the logits
            block.attn_gate.fill_(1.0)
        opened = llm(input_ids=ids).logits
        assert not torch.allclose(opened, bare)
        fusion.set_memory(None)
        assert torch.equal(llm(input_ids=ids).logits, bare)
        fusion.remove()


def test_blocks_ignore_padded_speech_frames() -> None:
    llm = tiny_llama(40).eval()
    fusion = XAttnFusion(llm, every=2, heads=4)
    for block in fusion.blocks:
        block.attn_gate.data.fill_(1.0)
    ids = torch.randint(4, 40, (1, 6))
    memory = torch.randn(1, 8, 32)
    with torch.no_grad():
        fusion.set_memory(memory, torch.tensor([4]))
        short = llm(input_ids=ids).logits
        garbage = memory.clone()
        garbage[:, 4:] = 99.0
        fusion.set_memory(garbage, torch.tensor([4]))
        assert torch.allclose(llm(input_ids=ids).logits, short, atol=1e-5)


@pytest.mark.parametrize(
    ("alignment", "copy_block"), [("none", False), ("monotonic", False), ("monotonic", True)]
)
def test_xattn_speechllm_trains_and_round_trips(
    llama_dir: Path, tied_llama_dir: Path, alignment: str, copy_block: bool
) -> None:
    kw = {"xattn_every": 1, "xattn_heads": 4, "xattn_alignment": alignment, "xattn_copy": copy_block}
    llama_dir = tied_llama_dir if copy_block else llama_dir
    model = _model(llama_dir, fusion="xattn", **kw)
    model.freeze(adapter=False, xattn=False)
    batch = _batch([12, 8], TEXTS[:2])
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"adapter", "xattn"}
    first, last = _train(model, batch, steps=40)
    assert last < 0.7 * first, (first, last)
    gates = [b.attn_gate.item() for b in model.xattn.blocks]
    assert any(abs(g) > 1e-3 for g in gates)
    state = model.trainable_state_dict()
    if copy_block:  # it trains and is saved apart from the after-layer blocks
        assert abs(model.xattn.copy_block.attn_gate.item()) > 1e-3
        assert any(k.startswith("xattn.copy_block.") for k in state)
    assert any(k.startswith("xattn.") for k in state) and any(k.startswith("adapter.") for k in state)
    if alignment == "monotonic":  # the slopes train and are saved with the blocks
        assert any(k.endswith("align_log_slope") for k in state)
    fresh = _model(llama_dir, fusion="xattn", seed=1, **kw)
    fresh.load_trainable(state)
    with torch.no_grad():
        assert torch.equal(fresh(batch), model(batch))
    # the prompt holds no audio positions: the speech only enters through the blocks
    feats = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (12, 5)]
    together = model.generate(feats, max_new_tokens=5)
    assert [model.generate([f], max_new_tokens=5)[0] for f in feats] == together
    # prompts of different lengths: the batch is left-padded, and each row still reads as it does alone
    prompts = ["a budget meeting about the cat", None]
    mixed = model.generate(feats, prompt=prompts, max_new_tokens=5)
    assert [model.generate([f], prompt=p, max_new_tokens=5)[0] for f, p in zip(feats, prompts)] == mixed
    assert len(model.generate(feats, max_new_tokens=3, num_beams=2)) == 2


def test_recipe_checks_xattn(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("stages: [{name: a, steps: 1, train: [xattn]}]\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="model.fusion is 'prefix'"):
        load_recipe(path)
    path.write_text("model: {fusion: xattn}\nstages: [{name: a, steps: 1, train: [adapter, xattn]}]\n")
    assert load_recipe(path).model.fusion == "xattn"
    with pytest.raises(RecipeError, match="model.fusion"):
        load_recipe(path, ["model.fusion=cross"])
    with pytest.raises(RecipeError, match="model.xattn_alignment 'diagonal'"):
        load_recipe(path, ["model.xattn_alignment=diagonal"])
    assert load_recipe(path, ["model.xattn_alignment=monotonic"]).model.xattn_alignment == "monotonic"
    assert load_recipe(Path("recipes/d1_xattn_gemma.yaml")).model.xattn_every == 6
    copy = ["model.xattn_copy=true", "model.xattn_alignment=monotonic"]
    assert load_recipe(path, copy).model.xattn_copy is True
    with pytest.raises(RecipeError, match="xattn_copy needs"):
        load_recipe(path, ["model.xattn_copy=true"])  # no alignment
    with pytest.raises(RecipeError, match="model.transcript_form 'lower'"):
        load_recipe(path, ["model.transcript_form=lower"])


def test_monotonic_bias_points_each_query_at_its_tokens_speech() -> None:
    """With sharp slopes a query that predicts token k reads speech vector k only (the last one past the
    end); padded speech stays unread; zero gates still give the bare LLM."""
    from llmasr.components.speech.xattn import GatedXAttnBlock, alibi_slopes, monotonic_bias

    assert alibi_slopes(4).tolist() == [1.0, 0.25, 0.0625, 0.015625]
    bias = monotonic_bias(torch.tensor([1.0, 0.5]), torch.tensor([[0, 2]]), 4)
    assert bias.shape == (1, 2, 2, 4)
    assert bias[0, 0, 1].tolist() == [-2.0, -1.0, 0.0, -1.0]
    assert bias[0, 1, 0].tolist() == [0.0, -0.5, -1.0, -1.5]
    torch.manual_seed(0)
    block = GatedXAttnBlock(32, heads=4, alignment="monotonic")
    with torch.no_grad():
        block.align_log_slope.fill_(math.log(60.0))
        block.attn_gate.fill_(1.0)
        x, mem = torch.randn(1, 4, 32), torch.randn(1, 6, 32)
        mask = torch.tensor([[True] * 5 + [False]])
        got = block(x, mem, mask, torch.tensor([[0, 1, 3, 9]])) - x
        value = torch.nn.functional.linear(mem, block.attn.in_proj_weight[64:], block.attn.in_proj_bias[64:])
        want = torch.tanh(torch.tensor(1.0)) * block.attn.out_proj(value[0, [0, 1, 3, 4]])
        assert torch.allclose(got[0], want, atol=1e-4)
        with pytest.raises(ValueError, match="token index"):
            block(x, mem, mask)
    with pytest.raises(ValueError, match="alignment"):
        GatedXAttnBlock(32, heads=4, alignment="diagonal")
    # batch 2, a slope per head, an index per row: the bias is laid out as MultiheadAttention takes it
    with torch.no_grad():
        block.align_log_slope.copy_(torch.tensor([0.0, -1.0, 1.0, -3.0]))
        x, mem = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
        mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
        index = torch.tensor([[0, 2, 4], [1, 1, 3]])
        got = block(x, mem, mask, index) - x
        w_q, w_k, w_v = block.attn.in_proj_weight.split(32)
        b_q, b_k, b_v = block.attn.in_proj_bias.split(32)
        xn = block.norm(x)
        q = (xn @ w_q.T + b_q).view(2, 3, 4, 8).transpose(1, 2)
        k = (mem @ w_k.T + b_k).view(2, 5, 4, 8).transpose(1, 2)
        v = (mem @ w_v.T + b_v).view(2, 5, 4, 8).transpose(1, 2)
        slopes = block.align_log_slope.exp().view(1, 4, 1, 1)
        dist = (torch.arange(5.0).view(1, 1, 1, 5) - index.view(2, 1, 3, 1)).abs()
        scores = q @ k.transpose(-1, -2) / 8**0.5 - slopes * dist
        scores = scores.masked_fill(~mask.view(2, 1, 1, 5), float("-inf"))
        attended = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 3, 32)
        want = torch.tanh(torch.tensor(1.0)) * block.attn.out_proj(attended)
        assert torch.allclose(got, want, atol=1e-5)


def test_monotonic_alignment_reads_token_index_from_position_ids() -> None:
    """The hook takes each query's token index from the LLM's position ids less the row's prompt length,
    so left padding (generation) and right padding (training) index alike."""
    llm = tiny_llama(40).eval()
    ids = torch.randint(4, 40, (2, 6))
    with torch.no_grad():
        bare = llm(input_ids=ids).logits
        fusion = XAttnFusion(llm, every=2, heads=4, alignment="monotonic")
        seen: list[torch.Tensor] = []
        block = fusion.blocks[0]
        original = block.forward
        block.forward = lambda *a: seen.append(a[3]) or original(*a)  # type: ignore[method-assign]
        fusion.set_memory(torch.randn(2, 5, 32), torch.tensor([5, 4]), torch.tensor([2, 3]))
        assert torch.equal(llm(input_ids=ids).logits, bare)  # gates at 0
        assert seen[-1].tolist() == [[0, 0, 1, 2, 3, 4], [0, 0, 0, 1, 2, 3]]
        # left padding: row 1's first real token is at column 2, positions count from there
        mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
        llm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        assert seen[-1].tolist() == [[0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 0, 1]]
        fusion.remove()


def test_copy_block_adds_the_aligned_speech_to_what_the_output_layer_reads() -> None:
    """copy_block: a block on the final norm, indexed as the after-layer blocks (the last layer's position
    ids), that starts by adding speech vector k to the normed stream of the query predicting token k, and
    the end token's embedding after a row's last vector; zero gates keep the bare LLM; an LLM with an
    untied output layer, or no end token, is refused."""
    llm = tiny_llama(40, tie=True).eval()
    ids = torch.randint(4, 40, (2, 6))
    with torch.no_grad():
        normed: list[torch.Tensor] = []
        handle = llm.model.norm.register_forward_hook(lambda m, a, o: normed.append(o))
        bare = llm(input_ids=ids).logits
        handle.remove()
        fusion = XAttnFusion(
            llm, every=2, heads=4, init="lm", alignment="monotonic", copy_block=True, end_token=2
        )
        assert fusion.positions == [1] and len(fusion.blocks) == 1 and fusion.copy_block is not None
        assert torch.equal(fusion.copy_block.align_log_slope, torch.zeros(4))  # every head at slope 1
        seen: dict[str, list[torch.Tensor]] = {"copy": [], "after": []}
        for key, block in (("copy", fusion.copy_block), ("after", fusion.blocks[0])):
            original = block.forward
            block.forward = lambda *a, o=original, k=key: seen[k].append(a[3]) or o(*a)  # type: ignore[method-assign]
        memory = torch.randn(2, 5, 32)
        fusion.set_memory(memory, torch.tensor([5, 2]), torch.tensor([2, 3]))
        assert torch.equal(llm(input_ids=ids).logits, bare)
        index = seen["copy"][-1]
        assert torch.equal(index, seen["after"][-1]) and index.tolist()[1] == [0, 0, 0, 1, 2, 3]
        fusion.copy_block.attn_gate.fill_(20.0)  # tanh = 1
        fusion.copy_block.align_log_slope.fill_(math.log(60.0))  # each query reads its own vector only
        # row 1 has 2 vectors: index 2 reads the end token's embedding, and so does 3 (the nearest)
        ended = torch.cat([memory, torch.zeros(2, 1, 32)], 1)
        ended[0, 5], ended[1, 2] = llm.model.embed_tokens.weight[2], llm.model.embed_tokens.weight[2]
        index = index.clamp(max=torch.tensor([[5], [2]]))
        want = llm.lm_head(normed[-1] + ended[torch.arange(2)[:, None], index])
        assert torch.allclose(llm(input_ids=ids).logits, want, atol=1e-4)
        fusion.set_memory(None)
        assert torch.equal(llm(input_ids=ids).logits, bare)
        fusion.remove()
    with pytest.raises(ValueError, match="tied"):
        XAttnFusion(tiny_llama(40), every=2, heads=4, alignment="monotonic", copy_block=True, end_token=2)
    with pytest.raises(ValueError, match="end_token"):
        XAttnFusion(tiny_llama(40, tie=True), every=2, heads=4, copy_block=True)


def test_monotonic_alignment_indexes_tokens_in_training_and_generation(llama_dir: Path) -> None:
    """Through the speech-LLM: in a training forward (right padding) and in generation (left padding,
    prompts of two lengths, greedy and beams), the query at the last prompt position predicts token 0 and
    decoding step n predicts token n."""
    model = _model(llama_dir, fusion="xattn", xattn_every=1, xattn_heads=4, xattn_alignment="monotonic")
    seen: list[torch.Tensor] = []
    block = model.xattn.blocks[0]
    original = block.forward
    block.forward = lambda *a: seen.append(a[3].clone()) or original(*a)  # type: ignore[method-assign]
    before, after = model.prompt_ids(None, None)
    start = len(before) + len(after)
    batch = _batch([12, 8], TEXTS[:2])
    with torch.no_grad():
        model(batch)
    width = seen[-1].shape[1]
    want = (torch.arange(width) - start + 1).clamp(min=0)
    assert torch.equal(seen[-1], want.expand(2, -1))
    feats = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (12, 5)]
    prompts = ["a budget meeting about the cat", None]
    for beams in (1, 2):
        seen.clear()
        model.generate(feats, prompt=prompts, max_new_tokens=4, num_beams=beams, min_new_tokens=4)
        assert seen[0].shape[0] == 2 * beams and torch.all(seen[0][:, -1] == 0), seen[0]
        assert len(seen) == 4 and all(torch.all(step == n) for n, step in enumerate(seen[1:], 1)), seen


def test_gate_lr_scale_moves_tanh_gates_faster() -> None:
    """AdamW moves a scalar by about lr per update: with gate_lr_scale the `*_gate` parameters get a
    group of their own at lr * scale (no weight decay); unscaled, the optimizer's layout is unchanged."""
    from llmasr.train.config import OptimRecipe, StageRecipe
    from llmasr.train.loop import make_optimizer

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.attn_gate = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.attn_gate) * self.proj(x)

    def one_update(scale: float) -> tuple[float, int]:
        torch.manual_seed(0)
        block = Block()
        opt = make_optimizer(block, StageRecipe(lr=1e-3, gate_lr_scale=scale), OptimRecipe())
        block.attn_gate.data.fill_(0.1)  # off zero, so the gate has a gradient
        (block(torch.ones(2, 4)) ** 2).sum().backward()
        opt.step()
        return abs(block.attn_gate.item() - 0.1), len(opt.param_groups)

    moved, groups = one_update(1.0)
    assert groups == 2 and moved == pytest.approx(1e-3, rel=0.05)  # with the other scalars (biases)
    moved, groups = one_update(20.0)
    assert groups == 3 and moved == pytest.approx(20e-3, rel=0.05)
    with pytest.raises(RecipeError, match="gate_lr_scale"):
        make_optimizer(Block(), StageRecipe(gate_lr_scale=0.0), OptimRecipe())


def test_lm_init_blocks_attend_as_the_next_layer_does() -> None:
    """init="lm": each block computes the following layer's own attention (grouped key/value heads
    repeated, no rotary positions) of its stream over the speech, and the zero gates keep the bare LLM."""
    llm = tiny_llama(40).eval()
    ids = torch.randint(4, 40, (2, 7))
    with torch.no_grad():
        bare = llm(input_ids=ids).logits
        fusion = XAttnFusion(llm, every=1, heads=4, init="lm")
        fusion.set_memory(torch.randn(2, 5, 32), torch.tensor([5, 5]))
        assert torch.equal(llm(input_ids=ids).logits, bare)
        layer = llm.model.layers[1]  # the block after layer 0 starts from layer 1
        block = fusion.blocks[0]
        x, mem = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
        got, _ = block.attn(block.norm(x), block.memory_norm(mem), block.memory_norm(mem), need_weights=False)
        a = layer.self_attn
        q = a.q_proj(layer.input_layernorm(x)).view(2, 7, 4, 8).transpose(1, 2)
        k = a.k_proj(layer.input_layernorm(mem)).view(2, 5, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        v = a.v_proj(layer.input_layernorm(mem)).view(2, 5, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        want = a.o_proj(
            torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1).matmul(v).transpose(1, 2).reshape(2, 7, 32)
        )
        assert torch.allclose(got, want, atol=1e-5)
        fusion.remove()
    with pytest.raises(ValueError, match="heads"):
        XAttnFusion(tiny_llama(40), every=1, heads=8, init="lm")
    with pytest.raises(ValueError, match="init"):
        XAttnFusion(tiny_llama(40), every=1, heads=4, init="copy")


def test_lm_init_refuses_layers_it_cannot_copy() -> None:
    """Query/key norms or projection biases (Gemma 3, Qwen) would be copied wrongly: an error instead."""
    llm = tiny_llama(40)
    llm.model.layers[1].self_attn.q_norm = torch.nn.Identity()
    with pytest.raises(ValueError, match="Llama-style only"):
        XAttnFusion(llm, every=1, heads=4, init="lm")
