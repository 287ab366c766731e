"""Task: train a speech-LLM (encoder -> adapter -> LLM; llmasr.components.speech.speechllm).

Two data paths, one loss:

* **cached states** (`data.states`: folders made by `llmasr data states`): the frozen encoder ran once per
  corpus, on trimmed audio, so a step runs only the adapter (and its CTC head) and the LLM; batches are
  bucketed by frame count, so short utterances are not padded to long ones;
* **audio** (`data.train`: a manifest): audio decoded and featurised batch by batch (DataLoader workers
  with `data.num_workers`), for encoders that train or features not cached.

The LM head runs only at transcript positions (most positions are prompt or audio). Dev metric: WER of
greedy transcripts of the first `run.max_dev_utterances` dev utterances (states or manifest). What ships
(`export/`): `model.safetensors` (adapter with its CTC head, cross-attention blocks, LoRA) and
`recipe.yaml`; the frozen encoder and LLM are loaded again by the names the recipe gives.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmasr.components.speech.adapters import HEAD_ADAPTERS, char_ids
from llmasr.components.speech.speechllm import (
    PARTS,
    TRANSCRIPT_FORMS,
    SpeechBatch,
    SpeechLLM,
    SpeechLlmConfig,
    build_speechllm,
    checkpoint_state,
    set_trainable,
)
from llmasr.components.speech.xattn import XATTN_ALIGNMENTS, XATTN_INITS
from llmasr.core.audio import load_audio
from llmasr.data.manifest import (
    Utterance,
    bucket_by_duration,
    filter_duration,
    read_manifest,
    utterance_prompt,
)
from llmasr.data.states import encoder_setup, read_states
from llmasr.train.config import (
    PRECISIONS,
    SCHEDULES,
    OptimRecipe,
    RecipeError,
    RunRecipe,
    StageRecipe,
    dump_recipe,
)
from llmasr.train.loop import length_batches

#: encoder frames per second of audio (Whisper)
FRAMES_PER_SECOND = 50.0
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_RECIPE = "recipe.yaml"
#: weights of the frozen token CTC head inside an exported adapter (`model.head` gives them anew)
HEAD_PREFIX = "adapter.head."
#: model fields that fix what a trained speech-LLM's weights mean: `init` refuses another value
INIT_FIELDS = ("encoder", "lm", "adapter", "adapter_kw", "lora", "fusion", "xattn_every", "xattn_heads")


@dataclass
class DataRecipe:
    """Training data: cached encoder states (`states`, `dev_states`) or manifests (`train`, `dev`), and
    batching by seconds of audio per micro-batch."""

    train: str = ""
    dev: str | None = None
    #: folders of cached encoder states (llmasr data states); when set, `train` is not read
    states: list[str] = field(default_factory=list)
    dev_states: list[str] = field(default_factory=list)
    min_duration: float = 0.0
    #: longer utterances are skipped (Whisper encoders take at most 30 s)
    max_duration: float = 30.0
    #: audio seconds per micro-batch, padded (duration-bucketed, so padding is small)
    batch_seconds: float = 120.0
    num_buckets: int = 10
    num_workers: int = 0
    #: feed the manifest's domain prompt and terms into the LLM prompt (audio path only)
    use_prompts: bool = True


@dataclass
class Recipe:
    kind: str = "speechllm"
    model: SpeechLlmConfig = field(default_factory=SpeechLlmConfig)
    data: DataRecipe = field(default_factory=DataRecipe)
    stages: list[StageRecipe] = field(default_factory=lambda: [StageRecipe()])
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    run: RunRecipe = field(default_factory=RunRecipe)
    #: start from a trained speech-LLM (an export folder, a run of one, or a shipped name such as
    #: speechllm-stack-tiny) instead of fresh adapter/LoRA weights: fine-tuning, e.g. on a better
    #: token CTC head (the head is frozen and not part of the weights, so `model.head` may differ);
    #: `model` must build the same trained shapes. A resumed run's checkpoint replaces these weights.
    init: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trained_parts(self) -> set[str]:
        """Every part some stage trains: what a checkpoint must hold."""
        return {p for s in self.stages for p in s.train}

    def validate(self) -> Recipe:
        """Cross-field checks that the types alone cannot express; returns self."""
        from llmasr.components.speech.adapters import ADAPTERS

        m = self.model
        if self.kind != "speechllm":
            raise RecipeError(f"kind '{self.kind}': this recipe type is speechllm")
        if not self.stages:
            raise RecipeError("a recipe needs at least one stage")
        if m.adapter not in ADAPTERS:
            raise RecipeError(f"model.adapter '{m.adapter}': choose one of {', '.join(ADAPTERS)}")
        if m.adapter in HEAD_ADAPTERS and not m.head:
            raise RecipeError(f"model.adapter '{m.adapter}' reads a trained token CTC head: set model.head")
        for i, s in enumerate(self.stages):
            where = f"stages.{i} ({s.name})"
            unknown = [p for p in s.train if p not in PARTS]
            if unknown or not s.train:
                raise RecipeError(f"{where}.train: {unknown or 'empty'}; choose from {', '.join(PARTS)}")
            if s.steps <= 0 and s.epochs <= 0:
                raise RecipeError(f"{where}: set steps or epochs")
            if s.schedule not in SCHEDULES:
                raise RecipeError(f"{where}.schedule '{s.schedule}': choose one of {', '.join(SCHEDULES)}")
            if "lora" in s.train and m.lora is None:
                raise RecipeError(f"{where} trains lora but model.lora is null")
            if "ctc_head" in s.train and m.adapter != "char_ctc":
                raise RecipeError(f"{where} trains ctc_head but model.adapter is '{m.adapter}'")
            if "head" in s.train and not m.head:
                raise RecipeError(f"{where} trains head but model.head is not set")
            if "xattn" in s.train and m.fusion != "xattn":
                raise RecipeError(f"{where} trains xattn but model.fusion is '{m.fusion}'")
            if "encoder" in s.train and self.data.states:
                raise RecipeError(f"{where} trains the encoder, but cached states (data.states) fix it")
        if self.run.mixed_precision not in PRECISIONS:
            raise RecipeError(
                f"run.mixed_precision '{self.run.mixed_precision}': choose one of {', '.join(PRECISIONS)}"
            )
        if self.optim.grad_accum < 1:
            raise RecipeError("optim.grad_accum must be at least 1")
        if m.ctc_weight > 0 and m.adapter != "char_ctc":
            raise RecipeError("model.ctc_weight > 0 needs model.adapter: char_ctc")
        if m.adapter == "char_ctc" and m.ctc_weight <= 0:
            # the compressor reads its head's argmax without gradient: only the CTC loss trains its head
            raise RecipeError(
                "model.adapter: char_ctc needs model.ctc_weight > 0 (the CTC loss trains its head)"
            )
        if m.fusion not in ("prefix", "xattn"):
            raise RecipeError(f"model.fusion '{m.fusion}': choose prefix or xattn")
        if m.xattn_every < 1:
            raise RecipeError("model.xattn_every must be at least 1")
        if m.xattn_init not in XATTN_INITS:
            raise RecipeError(f"model.xattn_init '{m.xattn_init}': choose {' or '.join(XATTN_INITS)}")
        if m.xattn_copy and (m.fusion != "xattn" or m.xattn_alignment != "monotonic"):
            raise RecipeError(
                "model.xattn_copy needs model.fusion: xattn and model.xattn_alignment: monotonic"
                " (it copies the speech of the token each query predicts)"
            )
        if m.transcript_form not in TRANSCRIPT_FORMS:
            raise RecipeError(
                f"model.transcript_form '{m.transcript_form}': choose {' or '.join(TRANSCRIPT_FORMS)}"
            )
        if m.xattn_alignment not in XATTN_ALIGNMENTS:
            raise RecipeError(
                f"model.xattn_alignment '{m.xattn_alignment}': choose {' or '.join(XATTN_ALIGNMENTS)}"
            )
        return self


@dataclass
class StateItem:
    """One cached utterance: its encoder states and transcript."""

    id: str
    text: str
    states: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.states) / FRAMES_PER_SECOND


def load_state_items(folders: Sequence[str], config: SpeechLlmConfig, max_seconds: float) -> list[StateItem]:
    """The cached utterances of `folders`, checked against the model's encoder window (trimmed states
    must meet a model that trims)."""
    items: list[StateItem] = []
    for folder in folders:
        setup = encoder_setup(folder)
        if setup.get("trim_tail") != config.trim_tail:
            raise RecipeError(
                f"{folder}: states made with trim_tail={setup.get('trim_tail')}, the model encodes with "
                f"trim_tail={config.trim_tail} (llmasr data states --trim-tail)"
            )
        for u in read_states(folder):
            if 0 < len(u.states) <= max_seconds * FRAMES_PER_SECOND and u.text.strip():
                items.append(StateItem(u.id, u.text, u.states))
    return items


def states_batch(items: Sequence[StateItem], with_ctc: bool = False) -> SpeechBatch:
    """Padded float32 states (B, T, D) with frame lengths, and the transcripts."""
    tensors = [torch.from_numpy(np.asarray(x.states, dtype=np.float32)) for x in items]
    batch = SpeechBatch(
        features=nn.utils.rnn.pad_sequence(tensors, batch_first=True),
        feature_lengths=torch.tensor([len(t) for t in tensors], dtype=torch.long),
        texts=[x.text for x in items],
    )
    if with_ctc:
        add_char_targets(batch, [x.text for x in items])
    return batch


def audio_batch(
    utts: Sequence[Utterance], featurize: Any, *, with_ctc: bool = False, use_prompts: bool = True
) -> SpeechBatch:
    """Load the batch's audio and build a SpeechBatch (features, sample lengths, texts, prompts, CTC)."""
    audio = [load_audio(u.audio, max_duration=None, name=u.id, allow_silent=True) for u in utts]
    batch = SpeechBatch(
        features=featurize(audio),
        feature_lengths=torch.tensor([len(a) for a in audio], dtype=torch.long),
        texts=[u.text for u in utts],
    )
    if use_prompts:
        prompts = [utterance_prompt(u) for u in utts]
        batch.domains = [p for p, _ in prompts]
        batch.terms = [t for _, t in prompts]
    if with_ctc:
        add_char_targets(batch, [u.text for u in utts])
    return batch


def add_char_targets(batch: SpeechBatch, texts: Sequence[str]) -> None:
    """Character CTC targets of the transcripts (the char_ctc compressor's auxiliary loss)."""
    ids = [char_ids(t) for t in texts]
    batch.ctc_target_lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    batch.ctc_targets = torch.zeros((len(ids), max(1, *(len(x) for x in ids))), dtype=torch.long)
    for i, x in enumerate(ids):
        batch.ctc_targets[i, : len(x)] = torch.tensor(x, dtype=torch.long)


def batch_to(batch: SpeechBatch, device: torch.device | str) -> SpeechBatch:
    """Tensors of the batch moved to `device` (lists stay as they are)."""
    out = SpeechBatch(**vars(batch))
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            setattr(out, name, value.to(device, non_blocking=True))
    return out


class SpeechLlmTask:
    """The speech-LLM as a training plug-in (llmasr.train.loop.Task)."""

    metrics = ("lm_loss", "ctc_loss", "audio_seconds", "dev_wer")

    def __init__(self, recipe: Recipe, *, encoder: nn.Module | None = None) -> None:
        """`encoder` replaces loading `recipe.model.encoder` by name (tests)."""
        self.recipe = recipe.validate()
        self._encoder = encoder
        d = recipe.data
        if not d.train and not d.states:
            raise RecipeError("data: give a training manifest (train) or cached encoder states (states)")
        self.cached = bool(d.states)
        self.with_ctc = recipe.model.adapter == "char_ctc"
        if self.cached:
            self.train_items: list[Any] = load_state_items(d.states, recipe.model, d.max_duration)
            self.dev_items: list[Any] = load_state_items(d.dev_states, recipe.model, d.max_duration)
            self._seconds = [x.seconds for x in self.train_items]
        else:
            self.train_items = filter_duration(read_manifest(d.train), d.min_duration, d.max_duration)
            dev = read_manifest(d.dev) if d.dev else []
            self.dev_items = filter_duration(dev, d.min_duration, d.max_duration)
        if not self.train_items:
            raise RecipeError(f"{d.states or d.train}: no training utterance within the duration limits")
        self.dev_items = self.dev_items[: recipe.run.max_dev_utterances]
        self.num_workers = 0 if self.cached else d.num_workers

    # ---- the Task protocol -------------------------------------------------------------------

    def build(self, device: torch.device) -> nn.Module:
        states_dim = int(self.train_items[0].states.shape[1]) if self.cached else None
        self.model = build_speechllm(
            self.recipe.model,
            device=str(device),
            encoder=self._encoder,
            with_encoder=not self.cached,
            states_dim=states_dim,
        )
        if self.recipe.init:
            theirs = load_init(self.model, self.recipe.init, self.recipe.model)
            if theirs.get("run", {}).get("seed") == self.recipe.run.seed and theirs.get("data") == asdict(
                self.recipe.data
            ):
                warnings.warn(
                    f"init '{self.recipe.init}' was trained on this data with run.seed"
                    f" {self.recipe.run.seed}: this run replays its batches in the same order;"
                    " set another run.seed to see others",
                    stacklevel=2,
                )
        return self.model

    def epoch_batches(self, epoch: int, rank: int, world: int) -> list[Any]:
        d, r = self.recipe.data, self.recipe.run
        if self.cached:
            idx = length_batches(
                self._seconds, d.batch_seconds, seed=r.seed, epoch=epoch, rank=rank, world=world,
                num_buckets=d.num_buckets,
            )  # fmt: skip
            return [[self.train_items[i] for i in b] for b in idx]
        batches = list(
            bucket_by_duration(
                self.train_items,
                d.batch_seconds,
                num_buckets=d.num_buckets,
                seed=r.seed + epoch,
                drop_oversize=True,
            )
        )
        per_rank = len(batches) // world
        return batches[rank : per_rank * world : world]

    def set_stage(self, model: nn.Module, stage: StageRecipe) -> None:
        set_trainable(_unwrap(model), stage.train)

    def collate(self, items: Sequence[Any]) -> SpeechBatch:
        """States padded, or audio decoded and featurised (possibly in a DataLoader worker)."""
        if self.cached:
            return states_batch(items, with_ctc=self.with_ctc)
        assert self.model.encoder is not None
        use_prompts = self.recipe.data.use_prompts
        return audio_batch(
            items, self.model.encoder.features, with_ctc=self.with_ctc, use_prompts=use_prompts
        )

    def loss(self, model: nn.Module, batch: SpeechBatch) -> tuple[torch.Tensor, dict[str, float]]:
        m = _unwrap(model)
        out = m.compute_losses(batch_to(batch, m.device))
        rows = int(batch.features.shape[0])
        numbers = {"lm_loss": float(out.lm_loss.detach()), "examples": rows}
        if out.ctc_loss is not None:
            numbers["ctc_loss"] = float(out.ctc_loss.detach())
        lengths = batch.feature_lengths
        per_second = FRAMES_PER_SECOND if self.cached else 16000.0
        numbers["audio_seconds"] = round(float(lengths.sum()) / per_second, 2) if lengths is not None else 0.0
        return out.loss, numbers

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from llmasr.core.metrics import wer

        if not self.dev_items:
            return {}
        m = _unwrap(model)
        items = sorted(self.dev_items, key=self._item_seconds)
        refs, hyps = [], []
        size = max(1, self.recipe.run.eval_batch_size)
        for i in range(0, len(items), size):
            chunk = items[i : i + size]
            batch = batch_to(self.collate(chunk), m.device)
            hyps += m.generate(
                batch.features,
                prompt=batch.domains,
                terms=batch.terms,
                lengths=batch.feature_lengths,
                max_new_tokens=self.recipe.model.max_new_tokens,
            )
            refs += [x.text for x in chunk]
        return {"dev_wer": wer(refs, hyps)}

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return checkpoint_state(_unwrap(model), self.recipe.trained_parts())

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        _unwrap(model).load_trainable(state, strict=False)

    def export(self, model: nn.Module, folder: Path) -> Path:
        """`model.safetensors` + `recipe.yaml`: what `--asr FOLDER` (and a shipped model) loads."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(model), str(folder / EXPORT_WEIGHTS))
        dump_recipe(self.recipe, folder / EXPORT_RECIPE)
        return folder

    # ---- helpers -----------------------------------------------------------------------------

    def _item_seconds(self, item: Any) -> float:
        return item.seconds if self.cached else float(item.duration or 0.0)


def load_init(model: SpeechLLM, name_or_path: str, config: SpeechLlmConfig | None = None) -> dict[str, Any]:
    """Load a trained speech-LLM's weights (adapter, cross-attention, LoRA; `Recipe.init`) into `model`.

    `name_or_path`: an export folder, a training run (its export, else its newest checkpoint), a
    checkpoint folder, or the name of a model shipped with llmasr. The frozen head's weights in it are
    skipped: `model` keeps the head its `model.head` names (fine-tuning on a better head). Raises
    RecipeError naming it when nothing is there, when its recipe differs from `config` in a field of
    INIT_FIELDS (another encoder, LLM, adapter, LoRA or fusion), or when its weights do not fit.
    Returns the whole recipe it was trained with (a dict)."""
    from safetensors.torch import load_file

    from llmasr.components.asr.speechllm import find_checkpoint, read_checkpoint_recipe
    from llmasr.core.errors import ModelError
    from llmasr.models.registry import resolve

    try:
        weights, recipe_path = find_checkpoint(resolve(name_or_path, "asr")[1])
        whole, theirs = read_checkpoint_recipe(recipe_path)
    except ModelError as exc:
        raise RecipeError(
            f"init '{name_or_path}': not a trained speech-LLM (a folder, a run, or a shipped name): {exc}"
        ) from None
    if config is not None:
        differ = [k for k in INIT_FIELDS if getattr(theirs, k) != getattr(config, k)]
        if differ:
            raise RecipeError(
                f"init '{name_or_path}': a speech-LLM of another setup than `model` ("
                + ", ".join(f"{k}: {getattr(theirs, k)} vs {getattr(config, k)}" for k in differ)
                + ")"
            )
    # the frozen token CTC head is exported inside the adapter; the one `model.head` names is kept
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith(HEAD_PREFIX)}
    try:
        model.load_trainable(state, strict=False)
    except (ModelError, RuntimeError) as exc:
        lines = [x.strip() for x in str(exc).strip().splitlines()]
        first = next((x for x in lines if "size mismatch" in x), lines[0])
        raise RecipeError(f"init '{name_or_path}': its weights do not fit this model: {first}") from None
    return whole


def _unwrap(model: nn.Module) -> SpeechLLM:
    return getattr(model, "module", model)  # type: ignore[return-value]
