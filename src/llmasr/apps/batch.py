"""`llmasr batch INPUT --out DIR`: transcribe a corpus, on this machine or a Ray cluster, resumably.

INPUT is a folder (its audio files, recursively), a JSONL manifest or a lhotse CutSet (`.jsonl.gz`). For
every input the run writes one result file (any writer format) at its path relative to the inputs' common
folder, so nothing can collide, and appends one line to `DIR/results.jsonl`:

    {"id", "input", "output", "status": "ok" | "error", "duration", "text", "error", "seconds", "rtfx"}

A result file is written atomically before its line is appended, and the line is flushed to disk, so a
run killed at any moment (kill -9 too) loses nothing: the next run with the same command reads
results.jsonl, drops a line cut short, and transcribes only what is not recorded. A failing input is
recorded with its error and never stops the run.

Engines: `ray` (default) runs Ray Data over the inputs with an actor pool of `--workers` transcribers, each
loading the models once (`--cpus-per-worker`, `--gpus-per-worker`); Ray starts embedded on this machine
unless `--address ray://host:port` or RAY_ADDRESS names a cluster (whose nodes need llmasr and the models
installed, and read the input paths). `local` runs one transcriber in this process, without Ray. Inside a
transcriber, `--batch-size` inputs are decoded together (Pipeline.transcribe_many): the recogniser takes
the segments of many inputs in one batch, the LM scores one segment of every input in one batch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmasr.apps.writers import WRITERS, output_paths, render
from llmasr.core.audio import RAW_SUFFIXES, display_name
from llmasr.core.errors import LlmasrError, internal_error
from llmasr.core.files import atomic_write, read_done

RESULTS = "results.jsonl"
ENGINES = ("ray", "local")
#: suffixes of the audio (and video) files a folder input holds
AUDIO_SUFFIXES = (
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif", ".aiff", ".au",
    ".caf", ".webm", ".mp4", ".mkv", ".mov", ".amr", ".3gp", ".spx", *RAW_SUFFIXES,
)  # fmt: skip


@dataclass
class BatchItem:
    """One input: a unique id (its path relative to the inputs' root, or the manifest id), where its audio
    is, the output path relative to the output folder, and its manifest prompt/terms if any."""

    id: str
    audio: str
    output: str
    prompt: str | None = None
    terms: list[str] | None = None


@dataclass
class BatchSummary:
    inputs: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def hours_per_hour(self) -> float | None:
        """Audio hours transcribed per wall-clock hour."""
        return self.audio_seconds / self.seconds if self.seconds > 0 else None


def collect_inputs(
    source: str | os.PathLike[str], fmt: str, on_error: Callable[[str], None] | None = None
) -> list[BatchItem]:
    """The inputs of a folder (audio files, recursively, sorted), a JSONL manifest or a lhotse CutSet,
    with their output paths (the input tree mirrored). Bad manifest lines are reported and skipped.
    Raises LlmasrError when `source` is none of these."""
    src = Path(source)
    prompts: list[tuple[str | None, list[str] | None]] = []
    ids: list[str] | None = None
    if src.is_dir():
        audio = sorted(str(p) for p in src.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        prompts = [(None, None)] * len(audio)
    elif src.is_file() and src.name.endswith((".jsonl.gz", ".json.gz")):
        from llmasr.data.lhotse_io import from_cutset

        try:
            import lhotse
        except ImportError as exc:
            raise LlmasrError(f"{src}: reading a lhotse CutSet needs lhotse (pip install lhotse)") from exc
        utts = from_cutset(lhotse.CutSet.from_file(str(src)))
        audio, ids = [u.audio for u in utts], [u.id for u in utts]
        prompts = [(u.prompt, None) for u in utts]
    elif src.is_file():
        from llmasr.data.manifest import read_manifest, utterance_prompt

        utts = list(read_manifest(src, on_error=(lambda e: on_error(str(e))) if on_error else None))
        audio, ids = [u.audio for u in utts], [u.id for u in utts]
        prompts = [utterance_prompt(u) for u in utts]
    else:
        raise LlmasrError(
            f"{display_name(src)}: not found (give a folder, a JSONL manifest or a lhotse CutSet)"
        )
    if not audio:
        raise LlmasrError(f"{display_name(src)}: no audio inputs found")
    out = output_paths(audio, Path(), fmt, mirror=True)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(a)) for a in audio])
    items = []
    for i, (path, target, (prompt, terms)) in enumerate(zip(audio, out, prompts)):
        uid = ids[i] if ids is not None else os.path.relpath(os.path.abspath(path), root)
        items.append(BatchItem(display_name(uid), path, str(target), prompt, terms))
    seen: set[str] = set()
    unique = []
    for item in items:  # a repeated manifest id or path is done once
        if item.id not in seen:
            seen.add(item.id)
            unique.append(item)
    return unique


class Transcriber:
    """What a worker holds: one Pipeline, loaded once; `__call__` transcribes a batch of inputs and gives
    back, per input, its rendered result or its error (never an exception). Ray Data calls it with a batch
    as a dict of columns; the local engine the same way."""

    def __init__(self, options: Any, fmt: str, batch_size: int = 8) -> None:
        from llmasr.decoding.pipeline import Pipeline

        self.pipeline = Pipeline(options)
        self.fmt = fmt
        self.batch_size = max(1, batch_size)

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        """`batch`: a pandas DataFrame (Ray Data) or a dict of equal-length columns (the local engine)."""
        if hasattr(batch, "to_dict"):
            rows = batch.to_dict("records")
        else:
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out: dict[str, list[Any]] = {
            k: [] for k in ("id", "output", "status", "text", "error", "duration", "seconds", "content")
        }
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            began = time.perf_counter()
            try:
                results = self.pipeline.transcribe_many(
                    [r["audio"] for r in chunk],
                    names=[r["id"] for r in chunk],
                    prompts=[r.get("prompt") or None for r in chunk],
                    terms=[_terms(r.get("terms")) for r in chunk],
                )
            except Exception:  # a bug in a batch: each input gets its own chance, alone
                results = [self._one(r) for r in chunk]
            share = (time.perf_counter() - began) / len(chunk)
            for row, result in zip(chunk, results):
                out["id"].append(row["id"])
                out["output"].append(row["output"])
                out["seconds"].append(round(share, 3))
                if isinstance(result, BaseException):
                    message = (
                        str(result) if isinstance(result, LlmasrError) else internal_error(row["id"], result)
                    )
                    out["status"].append("error")
                    out["error"].append(message)
                    out["text"].append("")
                    out["duration"].append(0.0)
                    out["content"].append("")
                else:
                    out["status"].append("ok")
                    out["error"].append("")
                    out["text"].append(result.text)
                    out["duration"].append(round(result.duration, 3))
                    out["content"].append(render(result, self.fmt))
        return out

    def _one(self, row: dict[str, Any]) -> Any:
        try:
            return self.pipeline.transcribe(
                row["audio"], name=row["id"], prompt=row.get("prompt") or None, terms=_terms(row.get("terms"))
            )
        except Exception as exc:
            return exc


def _terms(value: Any) -> list[str] | None:
    if value is None or isinstance(value, float):  # a missing value from a columnar batch
        return None
    return [str(t) for t in list(value)] or None


def run_batch(
    items: Sequence[BatchItem],
    out_dir: str | os.PathLike[str],
    options: Any,
    *,
    fmt: str = "txt",
    engine: str = "ray",
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    batch_size: int = 8,
    retry_errors: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Transcribe `items` not yet recorded in `out_dir/results.jsonl` (see the module doc); returns what this
    run did. `on_start(total, skipped)` and `on_result(record)` report progress."""
    if engine not in ENGINES:
        raise LlmasrError(f"--engine '{engine}': choose one of {', '.join(ENGINES)}")
    if fmt not in WRITERS:
        raise LlmasrError(f"unknown output format '{fmt}'; choose one of {', '.join(WRITERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / RESULTS
    done, _ = read_done(log)
    if retry_errors:
        done = {r["id"] for r in _records(log) if r.get("status") == "ok"}
    todo = [item for item in items if item.id not in done]
    summary = BatchSummary(inputs=len(items), skipped=len(items) - len(todo))
    if on_start:
        on_start(len(items), summary.skipped)
    started = time.perf_counter()
    if todo:
        settings = EngineSettings(engine, workers, cpus_per_worker, gpus_per_worker, address, batch_size)
        rows = engine_rows(todo, options, fmt, settings)
        with open(log, "a", encoding="utf-8") as fh:
            for row in rows:
                record = _record(row, out)
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                if record["status"] == "ok":
                    summary.done += 1
                    summary.audio_seconds += record["duration"]
                else:
                    summary.failed += 1
                    summary.errors.append(record["error"])
                if on_result:
                    on_result(record)
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


def _record(row: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write one input's result file (atomically), then make its results.jsonl record."""
    record = {
        "id": str(row["id"]),
        "input": str(row.get("audio", row["id"])),
        "output": None,
        "status": str(row["status"]),
        "duration": float(row["duration"]),
        "text": str(row["text"]),
        "error": str(row["error"]) or None,
        "seconds": float(row["seconds"]),
        "rtfx": round(float(row["duration"]) / float(row["seconds"]), 2)
        if float(row["seconds"]) > 0
        else None,
    }
    if record["status"] == "ok":
        target = out / str(row["output"])
        with atomic_write(target, newline="\n") as fh:
            fh.write(str(row["content"]))
        record["output"] = str(row["output"])
    return record


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@dataclass
class EngineSettings:
    """Where and how the inputs are decoded (`llmasr batch --engine --workers ...`)."""

    engine: str = "ray"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str | None = None
    batch_size: int = 8


def engine_rows(
    items: Sequence[BatchItem], options: Any, fmt: str, settings: EngineSettings
) -> Iterator[dict[str, Any]]:
    """Result rows (the Transcriber's columns, plus `audio`) as they finish, from the chosen engine."""
    rows = [asdict(item) for item in items]
    if settings.engine == "ray":
        yield from _ray_rows(rows, options, fmt, settings)
        return
    n = settings.batch_size
    transcriber = Transcriber(options, fmt, n)
    for start in range(0, len(rows), n):
        part = {k: [r[k] for r in rows[start : start + n]] for k in rows[0]}
        result = transcriber(part)
        for i, values in enumerate(zip(*result.values())):
            yield {**dict(zip(result, values)), "audio": part["audio"][i]}


def _ray_rows(
    rows: list[dict[str, Any]], options: Any, fmt: str, settings: EngineSettings
) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError as exc:
        raise LlmasrError(
            "the ray engine needs Ray: pip install 'llmasr[ray]' (or use --engine local)"
        ) from exc
    import logging

    for name in ("ray", "ray.data"):  # the run reports its own progress; Ray's INFO lines would drown it
        logging.getLogger(name).setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(
            address=settings.address or os.environ.get("RAY_ADDRESS") or None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            ignore_reinit_error=True,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    for row in rows:  # Arrow wants one type per column: an absent term list is an empty one
        row["terms"] = list(row["terms"] or [])
        row["prompt"] = row["prompt"] or ""
    workers = max(1, settings.workers)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * workers)))
    results = ds.map_batches(
        Transcriber,
        fn_constructor_kwargs={"options": options, "fmt": fmt, "batch_size": settings.batch_size},
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=settings.cpus_per_worker,
        num_gpus=settings.gpus_per_worker,
    )
    audio_of = {row["id"]: row["audio"] for row in rows}
    for row in results.iter_rows():
        row = dict(row)
        row["audio"] = audio_of.get(row["id"], row["id"])
        yield row
