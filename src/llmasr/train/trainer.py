"""The training loop: staged, resumable, on `accelerate` (CPU, one GPU, or `accelerate launch`).

Read top to bottom like nanoGPT's train.py: build the model, then for each stage unfreeze its
parts, make a fresh AdamW with warmup + decay, and loop over micro-batches (gradient accumulation,
clipping); every `log_every` updates append a CSV (and TensorBoard) row, every `eval_every` measure
dev WER by generating transcripts, every `save_every` write a checkpoint:

    <output_dir>/checkpoints/step-0001000/
        model.safetensors    only the weights a stage trains (adapter, CTC head, LoRA, ...)
        recipe.yaml          the resolved recipe: base encoder and LLM are reloaded by name from it
        trainer_state.json   step, stage, data position, last losses
        optimizer.pt         optimizer + LR schedule state of the current stage, RNG states

`resume=True` continues from the newest checkpoint: same data order, optimizer, schedule and RNG,
so the losses continue as if the run had never stopped. A step is one optimizer update.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmasr.components.speech.speechllm import SpeechBatch, SpeechLLM
from llmasr.data.manifest import Utterance
from llmasr.train.config import OptimRecipe, Recipe, RecipeError, StageRecipe, dump_recipe
from llmasr.train.dataset import (
    BatchDataset,
    batch_loader,
    batch_to,
    collate,
    epoch_batches,
    load_utterances,
)
from llmasr.train.model import build_model, checkpoint_state, set_trainable
from llmasr.train.runlog import CsvLog, prune, step_folders

CSV_FIELDS = (
    "step", "stage", "epoch", "loss", "lm_loss", "ctc_loss", "lr", "grad_norm", "audio_seconds", "elapsed",
    "dev_wer",
)  # fmt: skip
WEIGHTS = "model.safetensors"
STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"


@dataclass
class TrainSummary:
    """What a run did: for logs, the CLI and tests."""

    steps: int
    stage: str
    loss: float | None
    lm_loss: float | None
    ctc_loss: float | None
    dev_wer: float | None
    seconds: float
    output_dir: str
    checkpoint: str | None
    stopped_early: bool = False
    tensorboard: bool = False
    trainable: dict[str, int] = field(default_factory=dict)  # stage name -> trainable parameters


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


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return step_folders(Path(output_dir) / "checkpoints", (STATE, WEIGHTS))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


class _Objective(nn.Module):
    """Forward = the losses, so that DDP sees the whole training computation in one call."""

    def __init__(self, model: SpeechLLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SpeechBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.model.compute_losses(batch)
        ctc = out.ctc_loss.detach() if out.ctc_loss is not None else None
        return out.loss, out.lm_loss.detach(), ctc


def make_optimizer(model: nn.Module, stage: StageRecipe, optim: OptimRecipe) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    betas = tuple(optim.betas)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=stage.lr, betas=betas)  # type: ignore[arg-type]


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


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Trainer:
    """One run of a recipe. `encoder` replaces loading `recipe.model.encoder` by name (tests)."""

    def __init__(self, recipe: Recipe, *, encoder: nn.Module | None = None, console: Any = None) -> None:
        from accelerate import Accelerator
        from rich.console import Console

        self.recipe = recipe.validate()
        self.out = Path(recipe.run.output_dir)
        self.console = console or Console(stderr=True)
        self.acc = Accelerator(
            mixed_precision=recipe.run.mixed_precision,
            gradient_accumulation_steps=recipe.optim.grad_accum,
        )
        self._encoder = encoder
        self.step = 0
        self.stage_index = 0
        self.stage_step = 0
        self.epoch = 0
        self.cursor = 0  # next micro-batch of the epoch
        self.elapsed = 0.0
        self.audio_seconds = 0.0

    # ---- small helpers -----------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.acc.is_main_process:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def _stream(self, utts: list[Utterance], with_ctc: bool) -> Iterator[SpeechBatch]:
        """Micro-batches forever, epoch after epoch, from the saved data position."""
        r = self.recipe
        while True:
            batches = epoch_batches(
                utts,
                r.data.batch_seconds,
                seed=r.run.seed,
                epoch=self.epoch,
                num_buckets=r.data.num_buckets,
                rank=self.acc.process_index,
                world=self.acc.num_processes,
            )
            if not batches:
                raise RecipeError(
                    f"{r.data.train}: no training batch (too few utterances for the processes?)"
                )
            dataset = BatchDataset(
                batches[self.cursor :],
                self.model.encoder.features,
                with_ctc=with_ctc,
                use_prompts=r.data.use_prompts,
            )
            for batch in batch_loader(dataset, r.data.num_workers):
                self.cursor += 1
                yield batch
            self.epoch, self.cursor = self.epoch + 1, 0

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def dev_wer(self, utts: list[Utterance]) -> float | None:
        """Greedy transcripts of the first `max_dev_utterances` dev utterances; corpus WER."""
        from llmasr.core.metrics import wer

        r = self.recipe
        utts = sorted(utts[: r.run.max_dev_utterances], key=lambda u: float(u.duration or 0.0))
        if not utts:
            return None
        refs, hyps = [], []
        size = max(1, r.run.eval_batch_size)
        for i in range(0, len(utts), size):
            chunk = utts[i : i + size]
            batch = batch_to(
                collate(chunk, self.model.encoder.features, use_prompts=r.data.use_prompts), self.acc.device
            )
            with self.acc.autocast():
                hyps += self.model.generate(
                    batch.features,
                    prompt=batch.domains,
                    terms=batch.terms,
                    lengths=batch.feature_lengths,
                    max_new_tokens=r.model.max_new_tokens,
                )
            refs += [u.text for u in chunk]
        return wer(refs, hyps)

    # ---- checkpoints -------------------------------------------------------------------------

    def save(self, optimizer: torch.optim.Optimizer, scheduler: Any, last: dict[str, Any]) -> Path:
        """Write a checkpoint folder atomically (temp name, then rename) and prune old ones."""
        from safetensors.torch import save_file

        target = self.out / "checkpoints" / f"step-{self.step:07d}"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(checkpoint_state(self.model, self.recipe.trained_parts()), str(tmp / WEIGHTS))
            dump_recipe(self.recipe, tmp / "recipe.yaml")
            torch.save(
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                },
                tmp / OPTIMIZER,
            )
            state = {
                "step": self.step,
                "stage": self.stage_index,
                "stage_name": self.recipe.stages[self.stage_index].name,
                "stage_step": self.stage_step,
                "epoch": self.epoch,
                "cursor": self.cursor,
                "elapsed": self.elapsed,
                "audio_seconds": self.audio_seconds,
                "optimizer": OPTIMIZER,
                **last,
            }
            (tmp / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            prune(self.out / "checkpoints", self.recipe.run.keep_checkpoints, (STATE, WEIGHTS))
        self.acc.wait_for_everyone()
        return target

    def _restore(self, folder: Path) -> dict[str, Any]:
        """Weights, counters and data position from a checkpoint; optimizer state is returned for later."""
        from safetensors.torch import load_file

        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        self.model.load_trainable(load_file(str(folder / WEIGHTS)), strict=False)
        for key in ("step", "stage_step", "epoch", "cursor"):
            setattr(self, key, int(state[key]))
        self.stage_index = int(state["stage"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.audio_seconds = float(state.get("audio_seconds", 0.0))
        return torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=False)

    # ---- logs --------------------------------------------------------------------------------

    def _open_logs(self, resumed: bool) -> None:
        """CSV log (on resume, rows past the checkpoint are dropped: they will be redone)."""
        self.tb = None
        if not self.acc.is_main_process:
            return
        self.csv = CsvLog(self.out / "log.csv", CSV_FIELDS, self.step if resumed else None)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:
            self.say("note: tensorboard is not installed; logging to log.csv only (pip install tensorboard)")

    def _log(self, row: dict[str, Any]) -> None:
        if not self.acc.is_main_process:
            return
        self.csv.write(row)
        if self.tb is not None:
            for key in ("loss", "lm_loss", "ctc_loss", "lr", "grad_norm", "dev_wer"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}" if key != "dev_wer" else "dev/wer", row[key], self.step)

    # ---- the loop ----------------------------------------------------------------------------

    def fit(self, resume: bool = False, max_steps: int | None = None) -> TrainSummary:
        """Train every stage (from the newest checkpoint with `resume`); stop early after `max_steps`."""
        from accelerate.utils import set_seed
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        r, acc = self.recipe, self.acc
        set_seed(r.run.seed)
        self.model = build_model(r.model, device=str(acc.device), encoder=self._encoder)
        ckpt = latest_checkpoint(self.out) if resume else None
        if resume and ckpt is None:
            self.say(f"no checkpoint in {self.out / 'checkpoints'}: starting from scratch")
        saved = self._restore(ckpt) if ckpt is not None else None
        if ckpt is not None:
            self.say(f"resuming from {ckpt} (step {self.step}, stage {r.stages[self.stage_index].name})")
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_recipe(r, self.out / "recipe.yaml")
        self._open_logs(resumed=ckpt is not None)

        train_utts = load_utterances(r.data.train, r.data.min_duration, r.data.max_duration)
        dev_utts = load_utterances(r.data.dev, r.data.min_duration, r.data.max_duration) if r.data.dev else []
        first = epoch_batches(
            train_utts,
            r.data.batch_seconds,
            seed=r.run.seed,
            epoch=0,
            num_buckets=r.data.num_buckets,
            rank=acc.process_index,
            world=acc.num_processes,
        )
        per_epoch = len(first)
        totals = [stage_steps(s, per_epoch, r.optim.grad_accum) for s in r.stages]
        self.say(
            f"{len(train_utts)} training utterances, {per_epoch} batches per epoch; "
            f"stages: {', '.join(f'{s.name} ({n} steps)' for s, n in zip(r.stages, totals))}"
        )
        stream = self._stream(train_utts, with_ctc=r.model.adapter == "ctc")
        summary = TrainSummary(0, "", None, None, None, None, 0.0, str(self.out), str(ckpt) if ckpt else None)
        summary.tensorboard = self.tb is not None
        last: dict[str, Any] = {}
        dev_wer = None
        started = time.perf_counter() - self.elapsed
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not (acc.is_main_process and self.console.is_terminal),
        )
        with progress:
            task = progress.add_task("training", total=sum(totals), completed=self.step)
            for si in range(self.stage_index, len(r.stages)):
                stage, total = r.stages[si], totals[si]
                if si != self.stage_index:
                    self.stage_index, self.stage_step = si, 0
                set_trainable(self.model, stage.train)
                summary.trainable[stage.name] = self.model.count_parameters()[0]
                params = [p for p in self.model.parameters() if p.requires_grad]
                optimizer = make_optimizer(self.model, stage, r.optim)
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total))
                if saved is not None and self.stage_step > 0:
                    optimizer.load_state_dict(saved["optimizer"])
                    scheduler.load_state_dict(saved["scheduler"])
                if saved is not None:
                    _set_rng_state(saved["rng"])
                    saved = None
                acc.free_memory()  # forget the previous stage's prepared objects
                objective, optimizer = acc.prepare(_Objective(self.model), optimizer)
                objective.train()
                n_train = summary.trainable[stage.name]
                self.say(f"stage {stage.name}: {n_train:,} trainable parameters, {total} steps")
                window: dict[str, list[float]] = {"loss": [], "lm_loss": [], "ctc_loss": []}
                while self.stage_step < total:
                    if max_steps is not None and self.step >= max_steps:
                        break
                    grad_norm = None
                    for _ in range(r.optim.grad_accum):
                        batch = batch_to(next(stream), acc.device)
                        self.audio_seconds += float(batch.feature_lengths.sum()) / 16000
                        with acc.accumulate(objective):
                            loss, lm_loss, ctc_loss = objective(batch)
                            acc.backward(loss)
                            if acc.sync_gradients and r.optim.grad_clip > 0:
                                grad_norm = float(acc.clip_grad_norm_(params, r.optim.grad_clip))
                            optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                        window["loss"].append(float(loss.detach()))
                        window["lm_loss"].append(float(lm_loss))
                        if ctc_loss is not None:
                            window["ctc_loss"].append(float(ctc_loss))
                    scheduler.step()
                    self.step += 1
                    self.stage_step += 1
                    self.elapsed = time.perf_counter() - started
                    progress.update(
                        task, advance=1, description=f"{stage.name} loss {window['loss'][-1]:.3f}"
                    )
                    end_of_stage = self.stage_step >= total
                    stop = max_steps is not None and self.step >= max_steps
                    if self.step % max(1, r.run.log_every) == 0 or end_of_stage or stop:
                        means = {k: _mean(v) for k, v in window.items()}
                        means = {k: self._reduce(v) for k, v in means.items()}
                        last = {k: v for k, v in means.items()}
                        row = {
                            "step": self.step,
                            "stage": stage.name,
                            "epoch": self.epoch,
                            "lr": scheduler.get_last_lr()[0],
                            "grad_norm": grad_norm,
                            "audio_seconds": round(self.audio_seconds, 1),
                            "elapsed": round(self.elapsed, 2),
                            **means,
                        }
                        is_last = end_of_stage and si == len(r.stages) - 1
                        if dev_utts and ((r.run.eval_every and self.step % r.run.eval_every == 0) or is_last):
                            dev_wer = self.dev_wer(dev_utts) if acc.is_main_process else None
                            acc.wait_for_everyone()  # the other processes wait for the main one's eval
                            row["dev_wer"] = dev_wer
                            last["dev_wer"] = dev_wer
                        self._log(row)
                        self.say(
                            f"step {self.step} [{stage.name}] loss {means['loss']:.4f} lr {row['lr']:.2e}"
                            + (f" dev WER {100 * dev_wer:.2f}%" if row.get("dev_wer") is not None else "")
                        )
                        window = {k: [] for k in window}
                    if (r.run.save_every and self.step % r.run.save_every == 0) or end_of_stage or stop:
                        summary.checkpoint = str(self.save(optimizer, scheduler, last))
                if max_steps is not None and self.step >= max_steps and self.stage_step < total:
                    summary.stopped_early = True
                    break
        if self.tb is not None:
            self.tb.close()
        summary.steps = self.step
        summary.stage = r.stages[self.stage_index].name
        summary.loss, summary.lm_loss, summary.ctc_loss = (
            last.get(k) for k in ("loss", "lm_loss", "ctc_loss")
        )
        summary.dev_wer = last.get("dev_wer", dev_wer)
        summary.seconds = round(time.perf_counter() - started, 2)
        if acc.is_main_process:
            (self.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2), encoding="utf-8")
        return summary

    def _reduce(self, value: float | None) -> float | None:
        """Mean over processes (a no-op on one)."""
        if value is None or self.acc.num_processes == 1:
            return value
        return float(self.acc.reduce(torch.tensor(value, device=self.acc.device), reduction="mean"))


def train(
    recipe: Recipe,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    encoder: nn.Module | None = None,
    console: Any = None,
) -> TrainSummary:
    """Run a recipe end to end; see the module docstring for what lands in `run.output_dir`."""
    return Trainer(recipe, encoder=encoder, console=console).fit(resume=resume, max_steps=max_steps)
