"""Generative error correction: the guard, the prompt/answer rule shared by training and inference, and
a tiny corrector that learns to write a transcript no hypothesis holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmasr.decoding.correct import (
    GenerativeCorrector,
    answer_ids,
    change,
    correction_prompt,
    guard,
    prompt_ids,
)
from llmasr.train.config import RecipeError, load_recipe
from llmasr.train.corrector import CorrectorRecipe, CorrectorTask
from llmasr.train.loop import fit
from tests.tiny import save_tiny_lm, word_tokenizer, write_nbest

WORDS = "the cat sat on a mat hat bed dog ran in park red blue sky Context Transcript : , . 1 2 3".split()


def test_guard_keeps_close_outputs_and_falls_back_on_rewrites() -> None:
    hyps = ["the cat sat on the mat", "the cat sat on a mat"]
    kept = guard("The cat sat on a mat.", hyps, "the cat sat on a mat", max_change=0.3)
    assert kept.accepted and kept.text == "The cat sat on a mat." and kept.change == 0.0  # formatting
    other = guard("The cat sat on a mat.", hyps, "the cat sat on the mat", max_change=0.3)
    assert not other.accepted and other.text == "the cat sat on the mat"  # a choice: the rescorer's job
    # one word changed from a 6-word hypothesis: 1/6 <= 0.3
    assert guard("the cat sat on a hat", hyps, "x", 0.3).accepted
    rewrite = guard("a dog ran in the park today", hyps, "the cat sat on the mat", 0.3)
    assert not rewrite.accepted and rewrite.text == "the cat sat on the mat"
    assert rewrite.generated == "a dog ran in the park today"
    assert not guard("  ", hyps, "fallback").accepted
    assert guard("", [], "fallback").text == "fallback"
    assert change("the cat", ["the cat sat on a mat", "the cat"]) == 0.0


def test_prompt_lists_hypotheses_and_context() -> None:
    text = correction_prompt(["a b", "a c"], "Terms: Zed.")
    assert "2 best guesses" in text
    assert text.splitlines()[1:] == ["Context: Terms: Zed.", "1. a b", "2. a c"]
    assert "Context" not in correction_prompt(["a"], "  ")


def test_prompt_and_answer_ids_plain_and_chat() -> None:
    tok = word_tokenizer(WORDS)
    ids = prompt_ids(tok, ["the cat", "a cat"])
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[-2:]) == ["Transcript", ":"]
    answer = answer_ids(tok, "the cat sat")
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == "the cat sat"
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant{% endif %}"
    )
    chat = prompt_ids(tok, ["the cat"])
    assert tok.convert_ids_to_tokens(chat[-1:]) == ["<unk>"]  # "assistant", not in the tiny vocabulary
    assert chat.count(tok.bos_token_id) == 3  # system, user, generation prompt


def test_trained_corrector_writes_what_no_hypothesis_holds(tmp_path: Path) -> None:
    """The reference combines words of two hypotheses (neither is right): only a corrector that reads
    the list as it was trained to can write it, and the guard keeps it (1 edit from each)."""
    lm_dir = save_tiny_lm(tmp_path / "llm", WORDS, sharpen=2.0)
    ref = "the red cat sat on a mat"
    hyps = ["the red cat sat on a hat", "the bed cat sat on a mat"]
    lists = write_nbest(tmp_path / "train.jsonl", [(ref, hyps)] * 4)
    before = GenerativeCorrector(str(lm_dir), dtype="float32").generate([hyps])[0]
    assert before != ref
    recipe = CorrectorRecipe()
    recipe.model.lm = str(lm_dir)
    recipe.model.max_change = 0.3  # the reference is one word from each hypothesis (1/7)
    recipe.model.lora.r, recipe.model.lora.alpha, recipe.model.lora.dropout = 16, 32, 0.0
    recipe.model.lora.target_modules += ["gate_proj", "up_proj", "down_proj"]
    recipe.data.train = str(lists)
    recipe.data.dev = str(lists)
    recipe.data.history_rate = recipe.data.terms_rate = 0.0
    recipe.stages[0].steps, recipe.stages[0].lr, recipe.stages[0].warmup = 80, 2e-2, 0
    recipe.optim.grad_accum = 1
    recipe.run.output_dir = str(tmp_path / "run")
    recipe.run.eval_every = 0
    summary = fit(CorrectorTask(recipe))
    assert summary.dev["dev_wer"] == 0.0 < summary.dev_before["dev_wer"]

    from peft import PeftModel

    from llmasr.components.lm.causal import load_causal_lm

    base, tok = load_causal_lm(str(lm_dir), dtype="float32")
    model = PeftModel.from_pretrained(base, summary.export)
    fixed = GenerativeCorrector.from_module(model, tok, max_change=0.3).correct(hyps)
    assert fixed.accepted and fixed.text == ref


def test_corrector_recipe_validation(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("kind: corrector\nmodel: {lm: x}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="data.train"):
        load_recipe(path)
    path.write_text("kind: corrector\ndata: {train: t.jsonl}\nstages: [{name: a, train: [adapter]}]\n")
    with pytest.raises(RecipeError, match="a corrector trains"):
        load_recipe(path)
    path.write_text("kind: corrector\ndata: {train: t.jsonl}\n")
    assert isinstance(load_recipe(path, ["model.max_hypotheses=3"]), CorrectorRecipe)
