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
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from llmasr.components.speech.speechllm import DEFAULT_TEMPLATE
from llmasr.core.errors import LlmasrError
from llmasr.decoding.options import read_yaml_mapping

#: the parts of a SpeechLLM a stage can train
PARTS = ("adapter", "ctc_head", "xattn", "lora", "encoder")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16")


class RecipeError(LlmasrError):
    """A recipe file or override that cannot be used; names the key."""


@dataclass
class LoraRecipe:
    """LoRA on the LLM (see llmasr.components.lm.lora.LoraSettings)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelRecipe:
    """What to build: encoder and LLM by name (named model, folder or HF id), adapter, LoRA."""

    encoder: str = "whisper-tiny.en"
    lm: str = "gemma-3-270m"
    adapter: str = "stack"
    #: keyword arguments of the adapter (stack: {stack: 4}; ctc: vocab_size defaults to the char vocab)
    adapter_kw: dict[str, Any] = field(default_factory=dict)
    lora: LoraRecipe | None = None
    #: weight of the auxiliary CTC loss (CTC adapter only)
    ctc_weight: float = 0.0
    template: str = DEFAULT_TEMPLATE
    #: "token" (mean over transcript tokens) or "example" (mean of per-example means)
    loss_reduction: str = "token"
    #: dtype the LLM weights are loaded in; mixed precision is run.mixed_precision
    lm_dtype: str = "float32"
    #: transcript length limit at dev evaluation and inference
    max_new_tokens: int = 128
    #: prefix: audio embeddings in the prompt (D3, D4); xattn: gated cross-attention blocks (D1)
    fusion: str = "prefix"
    #: D1: a cross-attention block after every k-th decoder layer, with this many heads
    xattn_every: int = 4
    xattn_heads: int = 8


@dataclass
class DataRecipe:
    """Manifests (JSONL, llmasr.data.manifest) and batching by total audio seconds."""

    train: str = ""
    dev: str | None = None
    min_duration: float = 0.0
    #: longer utterances are skipped (Whisper encoders take at most 30 s)
    max_duration: float = 30.0
    #: audio seconds per micro-batch (duration-bucketed, so padding is small)
    batch_seconds: float = 120.0
    num_buckets: int = 10
    num_workers: int = 0
    #: feed the manifest's domain prompt and terms into the LLM prompt
    use_prompts: bool = True


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


@dataclass
class Recipe:
    kind: str = "speechllm"
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    stages: list[StageRecipe] = field(default_factory=lambda: [StageRecipe()])
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    run: RunRecipe = field(default_factory=RunRecipe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trained_parts(self) -> set[str]:
        """Every part some stage trains: what a checkpoint must hold."""
        return {p for s in self.stages for p in s.train}

    def validate(self) -> Recipe:
        """Cross-field checks that the types alone cannot express; returns self."""
        if self.kind != "speechllm":
            raise RecipeError(f"kind '{self.kind}': this recipe type is speechllm")
        if not self.stages:
            raise RecipeError("a recipe needs at least one stage")
        for i, s in enumerate(self.stages):
            where = f"stages.{i} ({s.name})"
            unknown = [p for p in s.train if p not in PARTS]
            if unknown or not s.train:
                raise RecipeError(f"{where}.train: {unknown or 'empty'}; choose from {', '.join(PARTS)}")
            if s.steps <= 0 and s.epochs <= 0:
                raise RecipeError(f"{where}: set steps or epochs")
            if s.schedule not in SCHEDULES:
                raise RecipeError(f"{where}.schedule '{s.schedule}': choose one of {', '.join(SCHEDULES)}")
            if "lora" in s.train and self.model.lora is None:
                raise RecipeError(f"{where} trains lora but model.lora is null")
            if "ctc_head" in s.train and self.model.adapter != "ctc":
                raise RecipeError(f"{where} trains ctc_head but model.adapter is '{self.model.adapter}'")
            if "xattn" in s.train and self.model.fusion != "xattn":
                raise RecipeError(f"{where} trains xattn but model.fusion is '{self.model.fusion}'")
        if self.run.mixed_precision not in PRECISIONS:
            raise RecipeError(
                f"run.mixed_precision '{self.run.mixed_precision}': choose one of {', '.join(PRECISIONS)}"
            )
        if self.optim.grad_accum < 1:
            raise RecipeError("optim.grad_accum must be at least 1")
        if self.model.ctc_weight > 0 and self.model.adapter != "ctc":
            raise RecipeError("model.ctc_weight > 0 needs model.adapter: ctc")
        if self.model.adapter == "ctc" and self.model.ctc_weight <= 0:
            # the compressor reads its head's argmax without gradient: only the CTC loss trains the head
            raise RecipeError("model.adapter: ctc needs model.ctc_weight > 0 (the CTC loss trains its head)")
        if self.model.fusion not in ("prefix", "xattn"):
            raise RecipeError(f"model.fusion '{self.model.fusion}': choose prefix or xattn")
        if self.model.xattn_every < 1:
            raise RecipeError("model.xattn_every must be at least 1")
        from llmasr.components.speech.adapters import ADAPTERS

        if self.model.adapter not in ADAPTERS:
            raise RecipeError(f"model.adapter '{self.model.adapter}': choose one of {', '.join(ADAPTERS)}")
        return self


# --------------------------------------------------------------------------- typed conversion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (dataclass, list[X], dict, scalar); RecipeError naming `key` if it cannot be."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{key}: may not be null")
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return _build(inner, value, key)
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(inner) or (Any,)
        return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RecipeError(f"{key}: expected true or false, got {value!r}")
    if inner in (int, float):
        if isinstance(value, bool):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{key}: expected a number, got {value!r}") from None
        if inner is int:
            if not number.is_integer():
                raise RecipeError(f"{key}: expected a whole number, got {value!r}")
            return int(number)
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise RecipeError(
            f"unknown key '{prefix + '.' if prefix else ''}{unknown[0]}'; allowed: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix + '.' if prefix else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def recipe_from_dict(data: dict[str, Any], root: type = Recipe) -> Any:
    """A validated recipe (`root`: Recipe, or another recipe dataclass with `validate`) from plain data
    (e.g. parsed YAML); missing fields take the defaults."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe is a YAML mapping")
    return _build(root, data).validate()


def _target_type(parts: list[str], root: type = Recipe) -> Any:
    """The declared type of the field a dotted path names; RecipeError for an unknown key."""
    tp: Any = root
    walked: list[str] = []
    for part in parts:
        inner, _ = _split_optional(tp)
        if dataclasses.is_dataclass(inner):
            names = [f.name for f in dataclasses.fields(inner)]
            if part not in names:
                at = ".".join([*walked, part])
                raise RecipeError(f"unknown key '{at}'; allowed: {', '.join(names)}")
            tp = _hints(inner)[part]
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
    inner, optional = _split_optional(tp)
    if optional and text.strip().lower() in ("null", "none", "~"):
        return None
    if inner is str:
        return text
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str], root: type = Recipe) -> dict[str, Any]:
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
