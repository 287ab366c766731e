"""The one training loop: staged, resumable, on `accelerate` (CPU, one GPU, or `accelerate launch`).

Every model llmasr trains (speech-LLMs, the token CTC head, the N-best rescorer, the generative corrector,
the entity retriever) is a `Task` plug-in: it builds its model, says what trains in each stage, turns a
batch into a loss and measures the model on dev data. Everything else is here once, and reads top to
bottom like nanoGPT's train.py: for each stage unfreeze its parts, make a fresh AdamW with warmup and
decay, loop over micro-batches (gradient accumulation, clipping); every `log_every` updates append a CSV
row, every `eval_every` run the task's dev metrics, every `save_every` write a checkpoint:

    <output_dir>/checkpoints/step-0001000/
        weights.safetensors  what the task saves (only trained weights: adapters, heads, LoRA, ...)
        optimizer.pt         optimizer + LR schedule of the current stage, RNG states
        state.json           step, stage, data position (epoch, batch), elapsed time, last numbers
    <output_dir>/recipe.yaml, log.csv, summary.json, and the task's export (what ships)

`resume=True` continues from the newest checkpoint with the same data order, optimizer, schedule and
RNG, so the losses continue as if the run had never stopped. A step is one optimizer update.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from llmasr.train.config import OptimRecipe, RecipeError, StageRecipe, dump_recipe
from llmasr.train.runlog import CsvLog, prune, step_folders

WEIGHTS = "weights.safetensors"
STATE = "state.json"
OPTIMIZER = "optimizer.pt"
BASE_FIELDS = ("step", "stage", "epoch", "loss", "lr", "grad_norm", "examples", "elapsed")


class Task(Protocol):
    """A training plug-in. `recipe` has `stages`, `optim` and `run` (llmasr.train.config)."""

    recipe: Any
    #: extra CSV columns the task logs (losses' parts, dev metrics)
    metrics: Sequence[str]

    def build(self, device: torch.device) -> nn.Module:
        """The model, on `device`, everything frozen (the loop calls `set_stage`)."""
        ...

    #: processes that `collate` batches ahead of the loop (0: in the loop's own process)
    num_workers: int

    def epoch_batches(self, epoch: int, rank: int, world: int) -> list[Any]:
        """This process's micro-batches of one epoch, in order (shuffled by seed + epoch); every process
        gets the same number, so they stay in step."""
        ...

    def collate(self, items: Any) -> Any:
        """One micro-batch's items -> what `loss` takes (reading audio, padding); may run in a worker."""
        ...

    def set_stage(self, model: nn.Module, stage: StageRecipe) -> None:
        """Unfreeze exactly what `stage.train` names."""
        ...

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to back-propagate, named numbers to log) of one micro-batch."""
        ...

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Dev metrics of the current model (names start with `dev_`); {} when there is no dev data."""
        ...

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds (the weights that train; frozen parts are rebuilt by `build`)."""
        ...

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def export(self, model: nn.Module, folder: Path) -> Path:
        """Write what ships (a LoRA adapter, a head, a retriever) into `folder`; returns its path."""
        ...


@dataclass
class Summary:
    """What a run did (`summary.json`)."""

    kind: str
    steps: int
    stage: str
    seconds: float
    output_dir: str
    export: str | None
    checkpoint: str | None
    loss: float | None = None
    #: the last dev metrics, and those before any training (a fresh run only)
    dev: dict[str, float] = field(default_factory=dict)
    dev_before: dict[str, float] = field(default_factory=dict)
    #: trainable parameters per stage
    trainable: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    stopped_early: bool = False


def lr_factor(stage: StageRecipe, total: int) -> Callable[[int], float]:
    """LR multiplier after `s` updates of a stage: linear warmup, then cosine/linear decay to min ratio."""

    def factor(s: int) -> float:
        if s < stage.warmup:
            return (s + 1) / (stage.warmup + 1)
        if stage.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - stage.warmup) / max(1, total - stage.warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if stage.schedule == "cosine" else 1 - progress
        return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * shape

    return factor


def stage_steps(stage: StageRecipe, batches_per_epoch: int, grad_accum: int) -> int:
    """Updates in a stage: `steps`, or `epochs` passes over the data at `grad_accum` batches each."""
    if stage.steps > 0:
        return stage.steps
    return max(1, math.ceil(stage.epochs * batches_per_epoch / grad_accum))


def make_optimizer(model: nn.Module, stage: StageRecipe, optim: OptimRecipe) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases, norms and scalars (< 2-D);
    tanh gates (`*_gate`) at `stage.lr * stage.gate_lr_scale`, without weight decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise RecipeError(f"stage {stage.name}: nothing to train ({stage.train})")
    if stage.gate_lr_scale <= 0:
        raise RecipeError(f"stage {stage.name}: gate_lr_scale must be positive, not {stage.gate_lr_scale}")
    # gates get a group of their own only when scaled (an unscaled stage keeps the optimizer's layout,
    # so checkpoints written before gate_lr_scale existed still resume)
    scaled = stage.gate_lr_scale != 1.0
    gates = [p for n, p in named if scaled and n.endswith("_gate")]
    rest = [p for n, p in named if not (scaled and n.endswith("_gate"))]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
        {"params": gates, "weight_decay": 0.0, "lr": stage.lr * stage.gate_lr_scale},
    ]
    betas = tuple(optim.betas)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, betas=betas)  # type: ignore[arg-type]


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return step_folders(Path(output_dir) / "checkpoints", (STATE, WEIGHTS))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Objective(nn.Module):
    """Forward = the task's loss, so that DDP sees the whole training computation in one call."""

    def __init__(self, task: Task, model: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


def fit(task: Task, *, resume: bool = False, max_steps: int | None = None, console: Any = None) -> Summary:
    """Train `task` through its recipe's stages (from the newest checkpoint with `resume`); stop early,
    with a checkpoint, after `max_steps` updates. Returns the run's Summary (also in summary.json)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from rich.console import Console

    r = task.recipe
    console = console or Console(stderr=True)
    acc = Accelerator(mixed_precision=r.run.mixed_precision, gradient_accumulation_steps=r.optim.grad_accum)
    main = acc.is_main_process

    def say(message: str) -> None:
        if main:
            console.print(message, highlight=False, markup=False, soft_wrap=True)

    set_seed(r.run.seed)
    out = Path(r.run.output_dir)
    model = task.build(acc.device)
    step = stage_index = stage_step = epoch = cursor = 0
    elapsed, examples = 0.0, 0
    ckpt = latest_checkpoint(out) if resume else None
    saved: dict[str, Any] | None = None
    if resume and ckpt is None:
        say(f"no checkpoint in {out / 'checkpoints'}: starting from scratch")
    if ckpt is not None:
        from safetensors.torch import load_file

        state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
        task.load_state_dict(model, load_file(str(ckpt / WEIGHTS)))
        step, stage_index, stage_step = int(state["step"]), int(state["stage"]), int(state["stage_step"])
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        elapsed, examples = float(state.get("elapsed", 0.0)), int(state.get("examples", 0))
        saved = torch.load(ckpt / OPTIMIZER, map_location="cpu", weights_only=False)
        say(f"resuming from {ckpt} (step {step}, stage {r.stages[stage_index].name})")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        dump_recipe(r, out / "recipe.yaml")
    fields = BASE_FIELDS + tuple(m for m in task.metrics if m not in BASE_FIELDS)
    csv = CsvLog(out / "log.csv", fields, step if ckpt is not None else None) if main else None

    per_epoch = len(task.epoch_batches(0, acc.process_index, acc.num_processes))
    if per_epoch == 0:
        raise RecipeError("no training batch (too little data for the batch size or the processes?)")
    totals = [stage_steps(s, per_epoch, r.optim.grad_accum) for s in r.stages]
    plan = ", ".join(f"{s.name} ({n} steps)" for s, n in zip(r.stages, totals))
    say(f"{per_epoch} batches per epoch; stages: {plan}")

    def stream() -> Iterator[Any]:
        """Collated micro-batches forever, epoch after epoch, from the saved data position."""
        nonlocal epoch, cursor
        while True:
            batches = task.epoch_batches(epoch, acc.process_index, acc.num_processes)
            for batch in _collated(task, batches[cursor:]):
                cursor += 1
                yield batch
            epoch, cursor = epoch + 1, 0

    summary = Summary(r.kind, 0, "", 0.0, str(out), None, str(ckpt) if ckpt else None)
    if ckpt is None and main and r.run.eval_before:
        model.eval()
        summary.dev_before = task.evaluate(model)
        if summary.dev_before:
            say("before training: " + _numbers(summary.dev_before))
            if csv is not None:
                csv.write({"step": 0, **summary.dev_before})
    batches = stream()
    started = time.perf_counter() - elapsed
    last: dict[str, float] = {}
    for si in range(stage_index, len(r.stages)):
        stage, total = r.stages[si], totals[si]
        if si != stage_index:
            stage_index, stage_step = si, 0
        task.set_stage(model, stage)
        summary.trainable[stage.name] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = make_optimizer(model, stage, r.optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total))
        if saved is not None and stage_step > 0:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        if saved is not None:
            _set_rng_state(saved["rng"])
            saved = None
        acc.free_memory()  # forget the previous stage's prepared objects
        objective, optimizer = acc.prepare(_Objective(task, model), optimizer)
        params = [p for p in model.parameters() if p.requires_grad]
        say(f"stage {stage.name}: {summary.trainable[stage.name]:,} trainable parameters, {total} steps")
        window: dict[str, list[float]] = {}
        while stage_step < total and (max_steps is None or step < max_steps):
            objective.train()
            grad_norm = None
            for _ in range(r.optim.grad_accum):
                batch = next(batches)
                with acc.accumulate(objective):
                    with acc.autocast():
                        loss, numbers = objective(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and r.optim.grad_clip > 0:
                        grad_norm = float(acc.clip_grad_norm_(params, r.optim.grad_clip))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                examples += int(numbers.pop("examples", 1))
                for key, value in {"loss": float(loss.detach()), **numbers}.items():
                    window.setdefault(key, []).append(value)
            scheduler.step()
            step, stage_step = step + 1, stage_step + 1
            elapsed = time.perf_counter() - started
            end_of_stage = stage_step >= total
            stop = max_steps is not None and step >= max_steps
            if step % max(1, r.run.log_every) == 0 or end_of_stage or stop:
                means = {k: _reduce(acc, sum(v) / len(v)) for k, v in window.items() if v}
                row: dict[str, Any] = {
                    "step": step,
                    "stage": stage.name,
                    "epoch": epoch,
                    "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                    "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                    "examples": examples,
                    "elapsed": round(elapsed, 1),
                    **{k: round(v, 5) for k, v in means.items()},
                }
                last = dict(means)
                is_last = end_of_stage and si == len(r.stages) - 1
                if (
                    (r.run.eval_every and step % r.run.eval_every == 0)
                    or is_last
                    or (end_of_stage and r.run.eval_each_stage)
                ):
                    if main:
                        model.eval()
                        summary.dev = task.evaluate(acc.unwrap_model(objective).model)
                        row.update({k: round(v, 5) for k, v in summary.dev.items()})
                    acc.wait_for_everyone()  # the other processes wait for the main one's eval
                if csv is not None:
                    csv.write(row)
                dev = {k: v for k, v in row.items() if k.startswith("dev_")}
                say(
                    f"step {step} [{stage.name}] "
                    + _numbers({k: v for k, v in means.items()})
                    + (f"; {_numbers(dev)}" if dev else "")
                )
                window = {}
            if (r.run.save_every and step % r.run.save_every == 0) or end_of_stage or stop:
                state = {
                    "step": step,
                    "stage": si,
                    "stage_name": stage.name,
                    "stage_step": stage_step,
                    "epoch": epoch,
                    "cursor": cursor,
                    "elapsed": round(elapsed, 2),
                    "examples": examples,
                    **last,
                }
                summary.checkpoint = str(
                    _save(task, acc, model, out, step, optimizer, scheduler, state, r.run.keep_checkpoints)
                )
        if max_steps is not None and step >= max_steps and stage_step < total:
            summary.stopped_early = True
            break
    summary.steps, summary.stage = step, r.stages[stage_index].name
    summary.loss = last.get("loss")
    summary.examples = examples
    summary.seconds = round(time.perf_counter() - started, 1)
    if main and not summary.stopped_early:
        model.eval()
        summary.export = str(task.export(model, out / "export"))
    if main:
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2), encoding="utf-8")
    acc.wait_for_everyone()
    return summary


def _save(
    task: Task,
    acc: Any,
    model: nn.Module,
    out: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """A checkpoint folder, written under a temporary name then renamed (never half there); old ones
    pruned."""
    from safetensors.torch import save_file

    target = out / "checkpoints" / f"step-{step:07d}"
    acc.wait_for_everyone()
    if acc.is_main_process:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in task.state_dict(model).items()}
        save_file(weights, str(tmp / WEIGHTS))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()},
            tmp / OPTIMIZER,
        )
        (tmp / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        prune(out / "checkpoints", keep, (STATE, WEIGHTS))
    acc.wait_for_everyone()
    return target


def _collated(task: Task, batches: Sequence[Any]) -> Iterator[Any]:
    """`task.collate` of each batch, in order; in `task.num_workers` DataLoader processes when asked
    (audio decoding and featurising ahead of the loop)."""
    workers = int(getattr(task, "num_workers", 0) or 0)
    if workers <= 0:
        return (task.collate(b) for b in batches)
    loader = torch.utils.data.DataLoader(
        list(batches),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=task.collate,
        prefetch_factor=2,
    )
    return iter(loader)


def _reduce(acc: Any, value: float) -> float:
    """Mean over processes (a no-op on one)."""
    if acc.num_processes == 1:
        return value
    return float(acc.reduce(torch.tensor(value, device=acc.device), reduction="mean"))


def _numbers(values: dict[str, Any]) -> str:
    return " ".join(
        f"{k} {100 * v:.2f}%" if k.endswith(("wer", "cer")) else f"{k} {v:.4f}"
        for k, v in values.items()
        if isinstance(v, (int, float))
    )


def shuffled_batches(
    items: Sequence[Any], size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[Any]]:
    """Fixed-size micro-batches of a shuffled copy (seed + epoch), every world-th batch for this rank."""
    order = list(items)
    random.Random(seed * 1000 + epoch).shuffle(order)
    batches = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or (
        [order] if order else []
    )
    per_rank = len(batches) // world
    return batches[rank : per_rank * world : world]


def length_batches(
    lengths: Sequence[float],
    budget: float,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    num_buckets: int = 10,
    max_items: int | None = None,
) -> list[list[int]]:
    """Indices in micro-batches of similar length whose summed length stays within `budget` (seconds
    of audio, frames): sorted into `num_buckets` length buckets, shuffled within each, batches in a
    shuffled order (seed + epoch). Items longer than the budget are left out."""
    rng = random.Random(seed * 1000 + epoch)
    order = sorted((i for i, n in enumerate(lengths) if n <= budget), key=lambda i: lengths[i])
    buckets = np.array_split(np.array(order, dtype=np.int64), max(1, min(num_buckets, len(order))))
    batches: list[list[int]] = []
    for bucket in buckets:
        ids = [int(i) for i in bucket]
        rng.shuffle(ids)
        current: list[int] = []
        longest = 0.0
        for i in ids:
            longest_if = max(longest, lengths[i])
            if current and (
                longest_if * (len(current) + 1) > budget or (max_items and len(current) >= max_items)
            ):
                batches.append(current)
                current, longest_if = [], lengths[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
    rng.shuffle(batches)
    per_rank = len(batches) // world
    return batches[rank : per_rank * world : world]
