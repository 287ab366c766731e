"""`llmasr train RECIPE [--set key=value ...] [--resume]`: run a training recipe.

Also runnable on its own, which is what `accelerate launch` needs for several GPUs:

    accelerate launch -m llmasr.train.cli recipes/d3_stack_gemma.yaml --set run.output_dir=runs/x
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmasr.core.errors import LlmasrError


def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a recipe field: key.sub=value (repeatable), e.g. stages.0.lr=1e-3."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in run.output_dir.")
    ] = False,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop (with a checkpoint) after this many updates.")
    ] = None,
) -> None:
    """Train a SpeechLLM (deep fusion), an N-best rescorer (`kind: rescorer`) or a generative corrector
    (`kind: corrector`); CPU or GPU(s)."""
    from rich.console import Console

    from llmasr.train.config import dump_recipe, load_recipe, task_for
    from llmasr.train.corrector import CorrectorRecipe, train_corrector
    from llmasr.train.rescorer import RescorerRecipe, train_rescorer
    from llmasr.train.retriever import RetrieverRecipe, train_retriever

    console = Console(stderr=True)

    def pct(value: float | None) -> str:
        return f"{100 * value:.2f}%" if value is not None else "-"

    try:
        cfg = load_recipe(recipe, list(set_ or []))
        console.print(dump_recipe(cfg), highlight=False, markup=False)
        task = task_for(cfg)
        if task is not None:
            from llmasr.train.loop import fit

            result = fit(task, resume=resume, max_steps=max_steps, console=console)
            dev = " ".join(f"{k} {v:.4f}" for k, v in result.dev.items())
            line = f"{dev or 'no dev data'}; exported {result.export or '- (stopped early)'}"
            done = result
        elif isinstance(cfg, RetrieverRecipe):
            done = train_retriever(cfg, console=console)
            line = f"dev recall@5 {done.dev_recall_at_5}; dev CER {pct(done.dev_cer)}; {done.retriever}"
        elif isinstance(cfg, (RescorerRecipe, CorrectorRecipe)):
            train_lora = train_rescorer if isinstance(cfg, RescorerRecipe) else train_corrector
            done = train_lora(cfg, resume=resume, max_steps=max_steps, console=console)  # type: ignore[arg-type]
            line = f"dev WER {pct(done.dev_wer_before)} -> {pct(done.dev_wer)}; adapter {done.adapter}"
    except LlmasrError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    console.print(f"{done.steps} steps in {done.seconds:.1f} s; {line}", highlight=False, markup=False)


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
