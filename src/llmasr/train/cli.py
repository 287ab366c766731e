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
    """Train from a recipe, by its kind: a speech-LLM (speechllm), a token CTC head (ctc_head), an N-best
    rescoring LM (rescorer), a generative corrector (corrector) or an entity retriever (retriever); one
    loop for all, on a CPU or GPU(s) (`accelerate launch -m llmasr.train.cli` for several)."""
    from rich.console import Console

    from llmasr.train.config import dump_recipe, load_recipe, task_for
    from llmasr.train.loop import fit

    console = Console(stderr=True)
    try:
        cfg = load_recipe(recipe, list(set_ or []))
        console.print(dump_recipe(cfg), highlight=False, markup=False)
        done = fit(task_for(cfg), resume=resume, max_steps=max_steps, console=console)
        before = " ".join(f"{k} {v:.4f}" for k, v in done.dev_before.items())
        dev = " ".join(f"{k} {v:.4f}" for k, v in done.dev.items())
        line = (f"{before} -> " if before else "") + (dev or "no dev data")
        line += f"; exported {done.export or '- (stopped early)'}"
    except LlmasrError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    console.print(f"{done.steps} steps in {done.seconds:.1f} s; {line}", highlight=False, markup=False)


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
