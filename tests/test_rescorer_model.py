"""The shipped trained rescorer: gemma-3-270m + the LoRA in llmasr/assets, merged once into the cache."""

from __future__ import annotations

import pytest

from llmasr.models.registry import REGISTRY, adapter_dir, is_installed, prepare

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not is_installed(REGISTRY["gemma-3-270m-rescorer"]), reason="gemma-3-270m or peft is not installed"
    ),
]

TEXTS = ["the cat sat on the mat", "the cat sat on a mat", "the cats at on the mat"]


def test_the_adapter_ships_with_the_package() -> None:
    folder = adapter_dir("gemma-3-270m-rescorer")
    assert (folder / "adapter_model.safetensors").stat().st_size < 8_000_000  # a few MB at most
    assert (folder / "adapter_config.json").is_file()


def test_merged_model_scores_like_base_plus_adapter() -> None:
    """The cached merged model is the base with the LoRA applied: same scores as peft on the fly,
    different from the untrained base."""
    from peft import PeftModel

    from llmasr.components.lm.causal import CausalLMScorer

    merged = CausalLMScorer(str(prepare("gemma-3-270m-rescorer")), dtype="float32", threads=2)
    base = CausalLMScorer(str(prepare("gemma-3-270m")), dtype="float32", threads=2)
    context = "Terms: mat.\nTranscript:"
    want_base = base.score(TEXTS, context)
    base.model = PeftModel.from_pretrained(base.model, str(adapter_dir("gemma-3-270m-rescorer")))
    base.model = base.model.merge_and_unload()
    base._cached = None
    got = merged.score(TEXTS, context)
    assert got == pytest.approx(base.score(TEXTS, context), abs=1e-3)
    assert max(abs(a - b) for a, b in zip(got, want_base)) > 1e-2  # the adapter changes the scores
