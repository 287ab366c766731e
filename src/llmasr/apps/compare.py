"""`llmasr compare RECIPE.yaml`: every method on the same manifests, one table and one plot.

A compare recipe names the manifests and the methods. A method is a set of pipeline options (the
shallow family: first pass, n-gram or LLM rescoring, prompting, correction, entity retrieval) or a deep
model; each runs on every manifest with the same evaluation (`llmasr.apps.evaluate`). The table gives WER and
entity recall per manifest, RTFx over all of them (this machine), and trainable / total parameters.
A method whose model is not available (not installed, not trained yet) is listed with the reason
instead of failing the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmasr.core.errors import LlmasrError
from llmasr.core.files import read_yaml_mapping
from llmasr.core.records import RecordError, build_record


@dataclass
class MethodSpec:
    name: str
    #: use each utterance's domain prompt and term list from the manifest
    prompts: bool = False
    #: options by flat name (asr: any recogniser, a trained speech-LLM too; lm, nbest, weights, correct,
    #: term_retrieval, max_terms, ...); `terms` may name a term-list file that then applies to every
    #: utterance
    options: dict[str, Any] = field(default_factory=dict)
    #: what the method is, in a few words (the table's note column)
    note: str = ""


@dataclass
class CompareRecipe:
    kind: str = "compare"
    manifests: dict[str, str] = field(default_factory=dict)
    asr: str = "whisper-tiny.en"
    methods: list[MethodSpec] = field(default_factory=list)
    #: utterances per manifest (0: all)
    limit: int = 0
    output: str = "docs/compare.md"
    plot: str | None = "docs/compare.png"
    json: str | None = "docs/compare.json"


@dataclass
class MethodResult:
    name: str
    note: str = ""
    wer: dict[str, float | None] = field(default_factory=dict)
    entity_recall: dict[str, float | None] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    audio_seconds: float = 0.0
    seconds: float = 0.0
    trainable: int | None = None
    total: int | None = None
    skipped: str | None = None

    @property
    def rtfx(self) -> float | None:
        return self.audio_seconds / self.seconds if self.seconds else None


def read_compare_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> CompareRecipe:
    """A compare recipe (typed: an unknown or mistyped key is named); `overrides` replace top-level keys."""
    data = {**read_yaml_mapping(path, "compare recipe"), **(overrides or {})}
    try:
        recipe = build_record(CompareRecipe, data)
    except RecordError as exc:
        raise LlmasrError(f"{path}: {exc}") from None
    if recipe.kind != "compare":
        raise LlmasrError(
            f"{path}: kind '{recipe.kind}' is a training recipe (llmasr train), not a comparison"
        )
    if not recipe.manifests or not recipe.methods:
        raise LlmasrError(f"{path}: a compare recipe needs `manifests` and `methods`")
    return recipe


# --------------------------------------------------------------------------- parameters


def _numel(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _safetensors_numel(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            shape = f.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= int(d)
            total += n
    return total


def _ct2_numel(model_dir: str) -> int | None:
    from llmasr.components.speech.encoders import read_ct2_header

    try:
        header = read_ct2_header(model_dir)
    except (OSError, LlmasrError, ValueError):
        return None
    total = 0
    for var in header.variables.values():
        if var.name.endswith("_scale"):
            continue  # int8 scales are not parameters
        n = 1
        for d in var.shape:
            n *= int(d)
        total += n
    return total


def _adapter_numel(lm_name: str | None) -> int:
    """Trained weights a named model adds to its base (its shipped LoRA); 0 for zero-shot models."""
    from llmasr.models.registry import REGISTRY, adapter_dir

    spec = REGISTRY.get(lm_name or "")
    if spec is None or spec.adapter is None:
        return 0
    return _safetensors_numel(adapter_dir(spec.adapter) / "adapter_model.safetensors")


def parameter_counts(pipeline: Any) -> tuple[int | None, int | None]:
    """(trainable, total) parameters of what a method runs; None where a part cannot be counted
    (pocketsphinx, n-gram LMs). Trainable counts what was trained for the method (adapters, LoRA,
    retriever, speech-LLM weights), not the few tuned log-linear weights."""
    recognizer = pipeline.recognizer
    trainable = 0
    asr_dir = getattr(recognizer, "model_dir", None)
    total = _ct2_numel(asr_dir) if asr_dir else None
    speech_llm = getattr(recognizer, "model", None)
    if speech_llm is not None and hasattr(speech_llm, "count_parameters"):
        trained = sum(p.numel() for name, p in speech_llm.named_parameters() if _trained_part(name))
        trainable, total = trained, speech_llm.count_parameters()[1]
    head = getattr(recognizer, "head", None)
    if head is not None:  # the CTC recogniser: a frozen encoder and a trained head
        total = _numel(recognizer.encoder) + _numel(head)
        trainable += _numel(head)
    scorer = pipeline.scorer
    if scorer is not None:
        model = getattr(scorer, "model", None)
        if model is None:
            total = None
        elif total is not None:
            total += _numel(model)
        trainable += _adapter_numel(pipeline.options.rescoring.lm)
    if pipeline.corrector is not None:
        total = None if total is None else total + _numel(pipeline.corrector.model)
        trainable += _adapter_numel(pipeline.corrector.name)
    finder = pipeline._finder
    if finder is not None:
        extra = (
            _numel(finder.retriever)
            + _numel(finder.encoder)
            + _numel(getattr(finder.embedder, "model", None))
        )
        total = None if total is None else total + extra
        trainable += _numel(finder.retriever)
    return trainable, total


def _trained_part(name: str) -> bool:
    """A speech-LLM parameter that training made: adapter (with its CTC head), cross-attention, LoRA."""
    from llmasr.components.speech.speechllm import part_of

    return part_of(name) in ("adapter", "head", "ctc_head", "xattn", "lora")


# --------------------------------------------------------------------------- running


def _build(method: MethodSpec, asr: str, log: Callable[[str], None]) -> Any:
    from llmasr.core.text import read_terms
    from llmasr.decoding.options import resolve_options

    opts = dict(method.options)
    if isinstance(opts.get("terms"), str):
        opts["terms"] = read_terms(opts["terms"])
    asr = opts.pop("asr", asr)
    from llmasr.decoding.pipeline import Pipeline

    return Pipeline(resolve_options(asr=asr, **opts), log=log)


def run_compare(
    recipe: CompareRecipe,
    *,
    log: Callable[[str], None] = lambda m: None,
    on_utterance: Callable[[], None] | None = None,
) -> list[MethodResult]:
    """Every method on every manifest; a method that cannot be built is skipped with its reason."""
    from llmasr.apps.evaluate import evaluate
    from llmasr.data.manifest import read_manifest

    sets = {}
    for label, path in recipe.manifests.items():
        if not Path(path).is_file():
            raise LlmasrError(f"{path}: manifest not found")
        utts = list(read_manifest(path, on_error=lambda exc: log(f"skipped: {exc}")))
        sets[label] = utts[: recipe.limit] if recipe.limit > 0 else utts
    results = []
    for method in recipe.methods:
        result = MethodResult(method.name, method.note)
        results.append(result)
        try:
            pipeline = _build(method, recipe.asr, log)
        except LlmasrError as exc:
            result.skipped = str(exc)
            log(f"{method.name}: skipped ({exc})")
            continue
        for label, utts in sets.items():
            started = time.perf_counter()
            report = evaluate(
                pipeline, utts, use_prompts=method.prompts, on_row=lambda _r: on_utterance and on_utterance()
            )
            result.seconds += time.perf_counter() - started
            s = report.summary()
            result.wer[label] = s["wer"]
            result.entity_recall[label] = s["entity_recall"]
            result.failed[label] = s["failed"]
            result.audio_seconds += s["audio_seconds"]
        result.trainable, result.total = parameter_counts(pipeline)
        log(f"{method.name}: " + ", ".join(f"{k} {_pct(v)}" for k, v in result.wer.items()))
        del pipeline
    return results


# --------------------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _count(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def markdown_table(results: list[MethodResult], manifests: list[str]) -> str:
    with_entities = [m for m in manifests if any(r.entity_recall.get(m) is not None for r in results)]
    head = (
        ["method"]
        + [f"{m} WER" for m in manifests]
        + [f"{m} entity recall" for m in with_entities]
        + ["RTFx", "trainable params", "total params", "what it is"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.skipped:
            cells = [r.name] + ["-"] * (len(head) - 2) + [f"not run: {r.skipped}"]
        else:
            cells = (
                [r.name]
                + [_pct(r.wer.get(m)) for m in manifests]
                + [_pct(r.entity_recall.get(m)) for m in with_entities]
                + ["-" if r.rtfx is None else f"{r.rtfx:.2f}", _count(r.trainable), _count(r.total), r.note]
            )
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[MethodResult], manifests: list[str], path: str | Path) -> Path:
    """WER against RTFx, one panel per manifest, one labelled point per method (PNG; log axes, since
    methods differ by orders of magnitude in both)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(manifests), figsize=(6 * len(manifests), 4.8), dpi=120, squeeze=False)
    for ax, manifest in zip(axes[0], manifests):
        shown = [r for r in results if not r.skipped and r.wer.get(manifest) is not None and r.rtfx]
        for i, r in enumerate(shown):
            wer = 100 * float(r.wer[manifest] or 0.0)
            ax.scatter(r.rtfx, max(wer, 0.1))
            ax.annotate(
                r.name,
                (r.rtfx, max(wer, 0.1)),
                textcoords="offset points",
                xytext=(5, 10 * (i % 3) - 10),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("RTFx on this machine (log)")
        ax.set_ylabel(f"WER on {manifest} (%, log)")
        ax.set_title(manifest)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("llmasr methods: accuracy against speed")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_outputs(recipe: CompareRecipe, results: list[MethodResult], command: str, seconds: float) -> str:
    from llmasr.core.files import atomic_write

    manifests = list(recipe.manifests)
    table = markdown_table(results, manifests)
    text = (
        f"# Method comparison\n\nReproduce: `{command}` ({seconds / 60:.1f} min on this machine). "
        f"First-pass recogniser: {recipe.asr}. Manifests: "
        + ", ".join(f"{k} (`{v}`)" for k, v in recipe.manifests.items())
        + ".\n\n"
        + table
    )
    if recipe.plot:
        plot(results, manifests, recipe.plot)
        text += f"\n![WER against RTFx]({Path(recipe.plot).name})\n"
    with atomic_write(recipe.output) as fh:
        fh.write(text)
    if recipe.json:
        with atomic_write(recipe.json) as fh:
            fh.write(json.dumps([asdict(r) | {"rtfx": r.rtfx} for r in results], indent=2))
    return table
