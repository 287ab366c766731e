"""`llmasr train RECIPE [--set key=value ...] [--resume]`: run a training recipe.

Also runnable on its own, which is what `accelerate launch` needs for several GPUs:

    accelerate launch -m llmasr.train.cli recipes/d3_stack_gemma.yaml --set run.output_dir=runs/x
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmasr.errors import LlmasrError


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
    """Train a SpeechLLM (deep fusion) or, with `kind: rescorer`, an N-best rescorer; CPU or GPU(s)."""
    from rich.console import Console

    from llmasr.train.config import dump_recipe, load_recipe
    from llmasr.train.rescorer import RescorerRecipe, train_rescorer
    from llmasr.train.trainer import train as run

    console = Console(stderr=True)
    try:
        cfg = load_recipe(recipe, list(set_ or []))
        console.print(dump_recipe(cfg), highlight=False, markup=False)
        if isinstance(cfg, RescorerRecipe):
            done = train_rescorer(cfg, resume=resume, max_steps=max_steps, console=console)
            before = f"{100 * done.dev_wer_before:.2f}%" if done.dev_wer_before is not None else "-"
            after = f"{100 * done.dev_wer:.2f}%" if done.dev_wer is not None else "-"
            console.print(
                f"{done.steps} steps in {done.seconds:.1f} s; dev WER {before} -> {after}; "
                f"adapter {done.adapter}",
                highlight=False,
                markup=False,
            )
            return
        summary = run(cfg, resume=resume, max_steps=max_steps, console=console)
    except LlmasrError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    loss = f"{summary.loss:.4f}" if summary.loss is not None else "-"
    wer = f"{100 * summary.dev_wer:.2f}%" if summary.dev_wer is not None else "-"
    console.print(
        f"{summary.steps} steps in {summary.seconds:.1f} s; loss {loss}; dev WER {wer}; "
        f"checkpoint {summary.checkpoint}",
        highlight=False,
        markup=False,
    )


def main() -> None:
    typer.run(train)


if __name__ == "__main__":
    main()
