"""The training loop shared by the text-side LoRA trainers (N-best rescorer, generative corrector).

Both train only the LoRA weights of a causal LM, one example (an N-best list) at a time with gradient
accumulation, and differ only in the loss of an example and the dev metric; those come in as
functions. Everything else is here once: stages with warmup and decay, accelerate (CPU, GPUs, several
processes each taking every world-th example), the CSV log, checkpoints that resume exactly, and the
final `adapter/` folder that ships.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llmasr.train.config import PRECISIONS, LoraRecipe, OptimRecipe, RecipeError, RunRecipe, StageRecipe
from llmasr.train.runlog import CsvLog, prune, step_folders

#: files a checkpoint holds once complete (state.json is written last)
COMPLETE = ("state.json", "optimizer.pt")
BASE_FIELDS = ("step", "stage", "epoch", "loss", "lr", "grad_norm", "examples", "elapsed", "dev_wer")

#: loss of one example: (the loss to back-propagate, named numbers to log)
StepLoss = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
#: a dev metric of the current model (lower is better), e.g. corpus WER
DevMetric = Callable[[torch.nn.Module], float]


@dataclass
class RunContext:
    """An accelerate run whose main process prints and writes (rescorer, corrector and retriever training)."""

    accelerator: Any
    say: Callable[[str], None]
    out: Path

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def start_run(recipe: Any, console: Any = None) -> RunContext:
    """Accelerator (recipe.run.mixed_precision), seed, output folder with the resolved recipe.yaml."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from rich.console import Console

    from llmasr.train.config import dump_recipe

    console = console or Console(stderr=True)
    acc = Accelerator(mixed_precision=recipe.run.mixed_precision)

    def say(msg: str) -> None:
        if acc.is_main_process:
            console.print(msg, highlight=False, markup=False, soft_wrap=True)

    set_seed(recipe.run.seed)
    out = Path(recipe.run.output_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, out / "recipe.yaml")
    return RunContext(acc, say, out)


def load_lora_lm(name: str, lora: LoraRecipe, dtype: str, device: str, purpose: str) -> tuple[Any, Any]:
    """(peft model, tokenizer): a named/folder/HF causal LM, frozen, with fresh LoRA weights."""
    from llmasr.components.lm.causal import load_causal_lm
    from llmasr.components.lm.lora import with_lora
    from llmasr.core.errors import LlmasrError
    from llmasr.models.registry import resolve

    kind, folder = resolve(name, "lm")
    if kind != "causal-lm":
        raise LlmasrError(f"'{name}' is a {kind} model; a {purpose} needs a causal LM")
    lm, tokenizer = load_causal_lm(folder, name=name, device=device, dtype=dtype)
    return with_lora(lm, lora), tokenizer


def save_adapter(module: torch.nn.Module, folder: Path) -> None:
    """The peft adapter of `module.lm`, written whole or not at all."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.lm.save_pretrained(str(tmp))  # type: ignore[operator]
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


@dataclass
class LoraSummary:
    """What a text-side LoRA run did (`summary.json`)."""

    steps: int
    loss: float | None
    dev_wer_before: float | None
    dev_wer: float | None
    seconds: float
    #: N-best lists read, and those trained on (informative / close enough to their reference)
    lists: int
    used_lists: int
    trainable: int
    output_dir: str
    adapter: str


def validate_lora_recipe(recipe: Any, parts: Sequence[str]) -> None:
    """Checks every text-side LoRA recipe shares: data, stages, accumulation, precision."""
    if not recipe.data.train:
        raise RecipeError("data.train: an N-best JSONL (llmasr data nbest) is required")
    if not recipe.stages:
        raise RecipeError("a recipe needs at least one stage")
    for i, s in enumerate(recipe.stages):
        if not s.train or [p for p in s.train if p not in parts]:
            raise RecipeError(f"stages.{i}.train: {s.train}; a {recipe.kind} trains {', '.join(parts)}")
        if s.steps <= 0 and s.epochs <= 0:
            raise RecipeError(f"stages.{i} ({s.name}): set steps or epochs")
    if recipe.optim.grad_accum < 1:
        raise RecipeError("optim.grad_accum must be at least 1")
    if recipe.run.mixed_precision not in PRECISIONS:
        raise RecipeError(
            f"run.mixed_precision '{recipe.run.mixed_precision}': choose one of {', '.join(PRECISIONS)}"
        )


def run_lora_loop(
    recipe: Any,
    ctx: RunContext,
    *,
    module: torch.nn.Module,
    examples: Sequence[Any],
    step_loss: StepLoss,
    dev_metric: DevMetric | None,
    metrics: Sequence[str] = (),
    lists: int = 0,
    resume: bool = False,
    max_steps: int | None = None,
) -> LoraSummary:
    """Train `module` (whose `.lm` is a peft model; only `lora_` parameters train) on `examples`
    with the recipe's stages, optimiser and run settings; writes `summary.json` and returns it."""
    from llmasr.train.loop import lr_factor, make_optimizer, stage_steps

    stages: Sequence[StageRecipe] = recipe.stages
    optim: OptimRecipe = recipe.optim
    run: RunRecipe = recipe.run
    acc, say = ctx.accelerator, ctx.say
    main, rank, world = acc.is_main_process, acc.process_index, acc.num_processes
    out = Path(run.output_dir)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)

    step, epoch, cursor = 0, 0, 0
    ckpt_root = out / "checkpoints"
    saved = None
    if resume:
        found = step_folders(ckpt_root, COMPLETE)
        if found:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            last = found[-1]
            weights = load_file(str(last / "adapter" / "adapter_model.safetensors"))
            set_peft_model_state_dict(module.lm, weights)  # type: ignore[arg-type]
            state = json.loads((last / "state.json").read_text(encoding="utf-8"))
            step, epoch, cursor = int(state["step"]), int(state["epoch"]), int(state["cursor"])
            saved = torch.load(last / "optimizer.pt", map_location="cpu", weights_only=False)
            say(f"resuming from {last} (step {step})")

    fields = BASE_FIELDS + tuple(m for m in metrics if m not in BASE_FIELDS)
    csv_log = CsvLog(out / "log.csv", fields, step if saved is not None else None) if main else None

    def log(row: dict[str, Any]) -> None:
        if csv_log is not None:
            csv_log.write(row)

    per_rank = len(examples) // world
    if per_rank == 0:
        raise RecipeError(f"{len(examples)} training examples for {world} processes")

    def order(ep: int) -> list[Any]:
        """This process's share of an epoch: one shuffle for all, then every world-th example."""
        items = list(examples)
        random.Random(run.seed * 1000 + ep).shuffle(items)
        return items[rank : per_rank * world : world]

    module.eval()
    before = dev_metric(module) if dev_metric is not None and saved is None and main else None
    if before is not None:
        say(f"dev WER before training: {100 * before:.2f}%")
        log({"step": 0, "dev_wer": round(before, 5)})
    started = time.perf_counter()
    totals = [stage_steps(s, per_rank, optim.grad_accum) for s in stages]
    last_loss: float | None = None
    dev_now: float | None = before
    done_before = 0
    for si, (stage, total) in enumerate(zip(stages, totals)):
        if step >= done_before + total:
            done_before += total
            continue
        optimizer = make_optimizer(module, stage, optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(stage, total))
        if saved is not None and saved.get("stage") == si:
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        saved = None
        module, optimizer = acc.prepare(module, optimizer)
        params = [p for p in module.parameters() if p.requires_grad]
        say(f"stage {stage.name}: {trainable:,} trainable parameters, {total} steps")
        window: dict[str, list[float]] = {}
        data = order(epoch)
        while step < done_before + total and (max_steps is None or step < max_steps):
            module.train()
            for _ in range(optim.grad_accum):
                if cursor >= len(data):
                    epoch, cursor = epoch + 1, 0
                    data = order(epoch)
                example = data[cursor]
                cursor += 1
                with acc.autocast():
                    loss, numbers = step_loss(module, example)
                acc.backward(loss / optim.grad_accum)
                for key, value in {"loss": float(loss.detach()), **numbers}.items():
                    window.setdefault(key, []).append(value)
            grad_norm = float(acc.clip_grad_norm_(params, optim.grad_clip)) if optim.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            stage_end = step >= done_before + total
            if step % max(1, run.log_every) == 0 or stage_end:
                means = {k: sum(v) / len(v) for k, v in window.items() if v}
                last_loss = means.get("loss")
                row = {
                    "step": step,
                    "stage": stage.name,
                    "epoch": epoch,
                    "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                    "grad_norm": None if grad_norm is None else round(grad_norm, 4),
                    "examples": step * optim.grad_accum,
                    "elapsed": round(time.perf_counter() - started, 1),
                    **{k: round(v, 5) for k, v in means.items()},
                }
                if dev_metric is not None and ((run.eval_every and step % run.eval_every == 0) or stage_end):
                    if main:
                        module.eval()
                        dev_now = dev_metric(acc.unwrap_model(module))
                        row["dev_wer"] = round(dev_now, 5)
                    acc.wait_for_everyone()
                log(row)
                extra = " ".join(f"{k} {v:+.4f}" for k, v in means.items() if k != "loss")
                say(
                    f"step {step} [{stage.name}] loss {means.get('loss', math.nan):.4f} {extra}".rstrip()
                    + (f" dev WER {100 * dev_now:.2f}%" if "dev_wer" in row and dev_now is not None else "")
                )
                window = {}
            if main and ((run.save_every and step % run.save_every == 0) or stage_end):
                target = ckpt_root / f"step-{step:07d}"
                target.mkdir(parents=True, exist_ok=True)
                save_adapter(acc.unwrap_model(module), target / "adapter")
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "stage": si},
                    target / "optimizer.pt",
                )
                (target / "state.json").write_text(
                    json.dumps({"step": step, "epoch": epoch, "cursor": cursor}), encoding="utf-8"
                )
                prune(ckpt_root, run.keep_checkpoints, COMPLETE)
        done_before += total
        if max_steps is not None and step >= max_steps:
            break
    acc.wait_for_everyone()
    summary = LoraSummary(
        steps=step,
        loss=last_loss,
        dev_wer_before=before,
        dev_wer=dev_now,
        seconds=round(time.perf_counter() - started, 1),
        lists=lists,
        used_lists=len(examples),
        trainable=trainable,
        output_dir=str(out),
        adapter=str(out / "adapter"),
    )
    if main:
        save_adapter(acc.unwrap_model(module), out / "adapter")
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2), encoding="utf-8")
    return summary
