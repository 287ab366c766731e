"""Training recipes: typed dataclasses, read from YAML, tweaked with `--set key.sub=value`.

The dataclass defaults are the only defaults: a recipe file lists what it changes, and the resolved
recipe (every field) is written next to each checkpoint, so a run can always be repeated.

    model:  {encoder: whisper-tiny.en, lm: gemma-3-270m, adapter: stack, adapter_kw: {stack: 4}}
    stages: [{name: adapter, steps: 500, lr: 1e-3, train: [adapter]}, ...]

Overrides address fields by dotted path; list items by index (`stages.1.lr=2e-4`); `null` clears an
optional section (`model.lora=null`) and setting a field inside a null section creates it with
defaults (`model.lora.r=16`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmasr.components.lm.lora import LoraSettings
from llmasr.core.files import read_yaml_mapping
from llmasr.core.records import RecordError, build_record, field_types, split_optional

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16")


#: a recipe file or override that cannot be used; names the key
RecipeError = RecordError


#: LoRA settings of a recipe (one record for the speech-LLM, the rescorer and the corrector)
LoraRecipe = LoraSettings


@dataclass
class StageRecipe:
    """One phase of training: what trains, for how long, at which learning rate."""

    name: str = "main"
    #: optimizer updates; when 0, `epochs` (passes over the training manifest) decides
    steps: int = 0
    epochs: float = 0.0
    lr: float = 1e-4
    train: list[str] = field(default_factory=lambda: ["adapter"])
    #: linear warmup, in optimizer updates
    warmup: int = 0
    schedule: str = "cosine"
    #: the schedule decays to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    #: tanh gates (parameters named `*_gate`, e.g. gated cross-attention's) learn at lr * this. AdamW
    #: moves a scalar by about lr per update whatever its gradient, so at lr 5e-4 a gate that starts at
    #: 0 cannot pass ~0.1 in a few hundred updates, and the speech barely reaches the LLM
    gate_lr_scale: float = 1.0


@dataclass
class OptimRecipe:
    """AdamW settings shared by every stage (each stage gets a fresh optimizer)."""

    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    #: micro-batches per optimizer update
    grad_accum: int = 1


@dataclass
class RunRecipe:
    """Where results go and how often the loop logs, evaluates and saves (in optimizer updates)."""

    output_dir: str = "runs/speechllm"
    seed: int = 0
    mixed_precision: str = "no"
    log_every: int = 10
    #: dev WER every N updates (0: only at the end of training)
    eval_every: int = 500
    save_every: int = 500
    max_dev_utterances: int = 64
    eval_batch_size: int = 16
    #: checkpoints kept in output_dir/checkpoints (older ones are deleted; 0 keeps all)
    keep_checkpoints: int = 3
    #: also measure the dev metrics before the first update (a fresh run), and at the end of each stage
    eval_before: bool = False
    eval_each_stage: bool = False


def recipe_from_dict(data: dict[str, Any], root: type) -> Any:
    """A validated recipe (`root`: Recipe, or another recipe dataclass with `validate`) from plain data
    (e.g. parsed YAML); missing fields take the defaults."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a YAML mapping")
    return build_record(root, data).validate()


def _target_type(parts: list[str], root: type) -> Any:
    """The declared type of the field a dotted path names; RecipeError for an unknown key."""
    tp: Any = root
    walked: list[str] = []
    for part in parts:
        inner, _ = split_optional(tp)
        if dataclasses.is_dataclass(inner):
            names = [f.name for f in dataclasses.fields(inner)]
            if part not in names:
                at = ".".join([*walked, part])
                raise RecipeError(f"unknown key '{at}'; allowed: {', '.join(names)}")
            tp = field_types(inner)[part]
        elif typing.get_origin(inner) is list:
            if not part.isdigit():
                raise RecipeError(f"'{'.'.join(walked)}' is a list: address items by index, not '{part}'")
            tp = (typing.get_args(inner) or (Any,))[0]
        else:  # a free-form mapping (adapter_kw) or a scalar
            if typing.get_origin(inner) is dict or inner is dict:
                tp = Any
            else:
                raise RecipeError(f"'{'.'.join(walked)}' has no sub-key '{part}'")
        walked.append(part)
    return tp


def _parse_value(text: str, tp: Any) -> Any:
    """A string field keeps the text as written (colons and all); anything else is read as YAML."""
    inner, optional = split_optional(tp)
    if optional and text.strip().lower() in ("null", "none", "~"):
        return None
    if inner is str:
        return text
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str], root: type) -> dict[str, Any]:
    """Apply `key.sub=value` strings to raw recipe data (in place); values get the field's type later."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set takes key.sub=value, got '{item}'")
        parts = key.split(".")
        value = _parse_value(text, _target_type(parts, root))
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                idx = int(part)
                if idx >= len(node):
                    if idx > len(node):
                        raise RecipeError(f"{key}: list '{'.'.join(parts[:i])}' has {len(node)} items")
                    node.append({})
                node = node[idx]
                continue
            child = node.get(part)
            if child is None:  # absent or null: start from the defaults (the stage list) or empty
                child = [asdict(s) for s in root().stages] if i == 0 and part == "stages" else {}
                node[part] = child
            node = child
        last = parts[-1]
        if isinstance(node, list):
            idx = int(last)
            if idx > len(node):
                raise RecipeError(f"{key}: the list has {len(node)} items")
            if idx == len(node):
                node.append(value)
            else:
                node[idx] = value
        else:
            node[last] = value
    return data


#: recipe kinds by the top-level `kind:` key of a YAML file (absent: speechllm)
KINDS = ("speechllm", "rescorer", "corrector", "retriever", "ctc_head")


def recipe_class(kind: str) -> type:
    if kind == "speechllm":
        from llmasr.train.speechllm import Recipe

        return Recipe
    if kind == "rescorer":
        from llmasr.train.rescorer import RescorerRecipe

        return RescorerRecipe
    if kind == "corrector":
        from llmasr.train.corrector import CorrectorRecipe

        return CorrectorRecipe
    if kind == "retriever":
        from llmasr.train.retriever import RetrieverRecipe

        return RetrieverRecipe
    if kind == "ctc_head":
        from llmasr.train.ctc_head import CtcHeadRecipe

        return CtcHeadRecipe
    if kind == "compare":
        raise RecipeError(
            "kind 'compare': a comparison of methods, run it with `llmasr compare`, not trained"
        )
    raise RecipeError(f"unknown recipe kind '{kind}'; choose one of {', '.join(KINDS)}")


def task_for(recipe: Any) -> Any:
    """The training-loop plug-in (llmasr.train.loop.Task) of a recipe, by its kind: every kind trains
    through the one loop (llmasr.train.loop.fit)."""
    if recipe.kind == "speechllm":
        from llmasr.train.speechllm import SpeechLlmTask

        return SpeechLlmTask(recipe)
    if recipe.kind == "ctc_head":
        from llmasr.train.ctc_head import CtcHeadTask

        return CtcHeadTask(recipe)
    if recipe.kind == "rescorer":
        from llmasr.train.rescorer import RescoringLmTask

        return RescoringLmTask(recipe)
    if recipe.kind == "corrector":
        from llmasr.train.corrector import CorrectorTask

        return CorrectorTask(recipe)
    if recipe.kind == "retriever":
        from llmasr.train.retriever import RetrieverTask

        return RetrieverTask(recipe)
    raise RecipeError(f"unknown recipe kind '{recipe.kind}'; choose one of {', '.join(KINDS)}")


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read a recipe YAML (None: all defaults), apply `--set` overrides, type-check and validate.

    The file's `kind:` (speechllm, rescorer, corrector, retriever) picks the recipe type; it is kept in the
    resolved recipe.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path, "recipe", RecipeError)
    try:
        root = recipe_class(str(data.get("kind", "speechllm")))
        return recipe_from_dict(apply_overrides(data, list(overrides or []), root), root)
    except RecipeError as exc:
        where = f"{path}: " if path is not None else ""
        raise RecipeError(f"{where}{exc}") from None


def dump_recipe(recipe: Any, path: str | Path | None = None) -> str:
    """The resolved recipe as YAML (every field), written to `path` when given."""
    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
