"""The trained N-best rescorer (issue 7): scoring parity with inference, the MWER loss, the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmasr.components.lm.causal import CausalLMScorer, load_causal_lm
from llmasr.decoding.rescore import Weights
from llmasr.train.config import RecipeError, load_recipe
from llmasr.train.loop import fit
from llmasr.train.rescorer import (
    ListScorer,
    LossRecipe,
    RescorerDataRecipe,
    RescorerRecipe,
    RescoringLmTask,
    add_contexts,
    list_loss,
    read_lists,
)
from tests.tiny import save_tiny_lm, write_nbest

WORDS = "the cat sat on a mat dog ran in park red blue sky Terms Transcript : , .".split()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "llm", WORDS, sharpen=2.0)


def _write_lists(path: Path) -> Path:
    """Lists where the recogniser slightly prefers a wrong hypothesis: only the LM can fix them."""
    rows = [
        ("the cat sat on a mat", ["the cat sat on a dog", "the cat sat on a mat", "the cat sat"]),
        ("the dog ran in the park", ["the dog ran in the sky", "the dog ran in the park"]),
        ("a red cat sat", ["a blue cat sat", "a red cat sat", "a red cat"]),
        ("the sky", ["the sky sat", "the sky"]),
    ]
    return write_nbest(path, rows)


def test_list_scorer_matches_the_inference_scorer(lm_dir: Path) -> None:
    """Absolute scores equal CausalLMScorer's (KV cache, shared prefix); relative ones shift by a constant."""
    lm, tok = load_causal_lm(str(lm_dir), dtype="float32")
    scorer = ListScorer(lm, tok, "tiny", 256)
    ref = CausalLMScorer(str(lm_dir), dtype="float32")
    texts = ["the cat sat on a mat", "the cat sat on a dog", "the cat ran"]
    for context in ("", "Terms: cat, mat.\nTranscript: the dog ran"):
        with torch.no_grad():
            got = scorer(texts, context).tolist()
            rel = scorer(texts, context, relative=True).tolist()
        want = ref.score(texts, context)
        assert got == pytest.approx(want, abs=1e-4)
        shift = [a - b for a, b in zip(got, rel)]
        assert max(shift) - min(shift) == pytest.approx(0.0, abs=1e-4)
        assert abs(shift[0]) > 1e-3  # "the cat" is shared and was left out


def test_mwer_loss_moves_probability_to_the_fewest_errors() -> None:
    scores = torch.tensor([0.5, 0.0, -0.2], requires_grad=True)
    loss, mwer, ce = list_loss(scores, [2, 0, 1], LossRecipe())
    loss.backward()
    assert scores.grad is not None
    assert scores.grad[1] < 0 < scores.grad[0]  # raise the correct one, lower the worst
    assert float(mwer) > 0  # the worst candidate has the most mass: expected errors above the mean
    listwise, _, _ = list_loss(scores.detach(), [2, 0, 1], LossRecipe(kind="listwise"))
    assert float(listwise) == pytest.approx(float(ce))


def test_read_lists_and_contexts(tmp_path: Path) -> None:
    lists = read_lists(_write_lists(tmp_path / "n.jsonl"))
    assert [x.errors for x in lists][0] == [1, 0, 3]
    assert all(x.informative for x in lists)
    data = RescorerDataRecipe(history_rate=1.0, terms_rate=1.0, terms_per_list=4)
    add_contexts(lists, data, seed=1)
    first = [x.context for x in lists]
    add_contexts(lists, data, seed=1)
    assert [x.context for x in lists] == first  # deterministic
    # history only (these references have no rare words for a term list), never the list's own reference
    assert all(c and "Terms:" not in c for c in first)
    assert all(c != x.reference for c, x in zip(first, lists))
    rare = tmp_path / "rare.jsonl"
    rare.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "reference": ref, "nbest": [{"text": ref, "am_score": -1.0}]}) + "\n"
            for i, ref in enumerate(["The missionaries sailed to Ceylon.", "Orbital telescopes observe."])
        ),
        encoding="utf-8",
    )
    with_terms = read_lists(rare)
    add_contexts(with_terms, RescorerDataRecipe(history_rate=0.0, terms_rate=1.0, terms_per_list=3), seed=0)
    for x in with_terms:
        assert x.context.startswith("Terms: ") and x.context.endswith("Transcript:")
        listed = x.context.split("\n")[0][len("Terms: ") : -1].split(", ")
        assert len(listed) == 3 and set(listed) & set(x.reference.strip(".").split())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "reference": "x", "nbest": []}\n{"id": "b"\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad.jsonl, line 2: not an N-best record"):
        read_lists(bad)
    with pytest.raises(RecipeError, match="not found"):
        read_lists(tmp_path / "missing.jsonl")


def test_recipe_kind_picks_the_rescorer_recipe(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("kind: rescorer\ndata: {train: x.jsonl}\n", encoding="utf-8")
    r = load_recipe(path, ["loss.temperature=2", "stages.0.steps=5"])
    assert isinstance(r, RescorerRecipe) and r.loss.temperature == 2.0 and r.stages[0].steps == 5
    with pytest.raises(RecipeError, match="a rescorer trains lora"):
        load_recipe(path, ["stages.0.train=[adapter]"])
    with pytest.raises(RecipeError, match="unknown recipe kind 'nope'"):
        path.write_text("kind: nope\n", encoding="utf-8")
        load_recipe(path)
    shipped = Path(__file__).resolve().parents[1] / "recipes" / "rescorer_gemma.yaml"
    assert isinstance(load_recipe(shipped), RescorerRecipe)


def test_training_fixes_the_lists_and_resumes(lm_dir: Path, tmp_path: Path) -> None:
    data = _write_lists(tmp_path / "n.jsonl")
    out = tmp_path / "run"
    recipe = RescorerRecipe()
    recipe.model.lm = str(lm_dir)
    recipe.model.weights = {"lm_weight": 1.0, "word_bonus": 0.0, "agreement_weight": 0.0}
    recipe.model.lora.dropout = 0.0
    recipe.data.train = recipe.data.dev = str(data)
    recipe.data.history_rate = recipe.data.terms_rate = 0.0
    recipe.stages[0].steps, recipe.stages[0].epochs, recipe.stages[0].lr, recipe.stages[0].warmup = (
        24,
        0,
        3e-2,
        0,
    )
    recipe.optim.grad_accum = 2
    recipe.run.output_dir, recipe.run.log_every, recipe.run.eval_every, recipe.run.save_every = (
        str(out),
        4,
        0,
        8,
    )
    first = fit(RescoringLmTask(recipe), max_steps=8)
    assert first.steps == 8 and first.dev_before["dev_wer"] > 0
    done = fit(RescoringLmTask(recipe), resume=True)
    assert done.steps == 24
    assert done.dev["dev_wer"] < first.dev_before["dev_wer"]
    assert (out / "export" / "adapter_model.safetensors").is_file()
    rows = (out / "log.csv").read_text(encoding="utf-8").splitlines()
    losses = [float(r.split(",")[3]) for r in rows[2:] if r.split(",")[3]]
    assert losses[-1] < losses[0]
    # the adapter loads back (merged) into the base model and reproduces the trained choices
    from peft import PeftModel

    lm, tok = load_causal_lm(str(lm_dir), dtype="float32")
    merged = PeftModel.from_pretrained(lm, str(out / "export")).merge_and_unload()
    scorer = ListScorer(merged, tok, "tiny", 256)
    lists = read_lists(data)
    w = Weights(**recipe.model.weights)
    from llmasr.train.rescorer import dev_wer

    assert dev_wer(scorer, lists, w) == pytest.approx(done.dev["dev_wer"])


def test_cli_trains_a_rescorer_recipe(lm_dir: Path, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from llmasr.train.cli import train as train_cmd

    data = _write_lists(tmp_path / "n.jsonl")
    path = tmp_path / "r.yaml"
    path.write_text(
        f"kind: rescorer\nmodel: {{lm: '{lm_dir}'}}\ndata: {{train: '{data}', dev: '{data}'}}\n"
        f"stages: [{{name: lora, steps: 3, lr: 1.0e-2, train: [lora]}}]\n"
        f"optim: {{grad_accum: 1}}\nrun: {{output_dir: '{tmp_path / 'run'}', eval_every: 0}}\n",
        encoding="utf-8",
    )
    app = typer.Typer()
    app.command()(train_cmd)
    result = CliRunner().invoke(app, [str(path), "--set", "loss.kind=listwise"])
    assert result.exit_code == 0, result.output
    assert "3 steps in" in result.output and "dev_wer" in result.output
    assert (tmp_path / "run" / "export" / "adapter_config.json").is_file()
    bad = CliRunner().invoke(app, [str(path), "--set", "loss.kind=hinge"])
    assert bad.exit_code == 1 and "loss.kind 'hinge'" in bad.output
