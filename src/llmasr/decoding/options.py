"""Options of a transcription run: the one place defaults live.

A profile (YAML) holds tuned weights for an (asr, lm) pair; `llmasr tune` writes one and the
package ships those tuned on synthetic dev speech (`llmasr/profiles/`). Explicit options beat
the profile, which beats the dataclass defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from llmasr.core.audio import PcmFormat
from llmasr.core.errors import LlmasrError
from llmasr.decoding.correct import MAX_CHANGE
from llmasr.decoding.rescore import Weights

DEFAULT_ASR = "whisper-tiny.en"
DEFAULT_LM = "gemma-3-270m"
DEFAULT_CORRECTOR = "smollm2-135m-corrector"
DEFAULT_RETRIEVER = "retriever-tiny"
TERM_RETRIEVALS = ("text", "speech")
#: weights for an LM with no tuned profile (a Hugging Face id, a local folder): those tuned for
#: whisper-tiny.en + gemma-3-270m, a sensible start until `llmasr tune` is run for that pair
UNTUNED_LM_WEIGHTS = {"lm_weight": 0.2, "word_bonus": 1.5, "agreement_weight": 1.0}


@dataclass
class Options:
    asr: str = DEFAULT_ASR
    lm: str | None = DEFAULT_LM
    nbest: int = 8
    weights: Weights = field(default_factory=Weights)
    prompt: str | None = None
    terms: list[str] = field(default_factory=list)
    #: LM tokens of previous segments that condition the next one (long-form carry-over)
    context_tokens: int = 128
    #: also give the domain prompt and terms to Whisper as its initial prompt
    asr_prompt: bool = True
    #: terms per segment given to Whisper and the LLM; a longer list is narrowed per segment by a first
    #: decoding and term retrieval, then the segment is decoded again (0: always give the whole list)
    max_terms: int = 12
    #: how that narrowing picks terms: "text" (the words of a first decoding spell the term) or "speech"
    #: (the trained speech-to-entity retriever `retriever` (D5) reads the audio; one decoding instead of two)
    term_retrieval: str = "text"
    retriever: str = DEFAULT_RETRIEVER
    #: segments decoded together by the first pass
    batch_size: int = 8
    threads: int = 0
    #: first-pass model replicas that can decode at the same time (the server sets its concurrency)
    asr_workers: int = 1
    device: str = "cpu"
    #: LLM precision: auto (bfloat16 where the hardware has it natively, else float32), float32, bfloat16
    lm_dtype: str = "auto"
    max_duration: float = 4 * 3600.0
    #: format of headerless inputs (.raw, .pcm): ENCODING:RATE[:CHANNELS], e.g. s16le:8000 (llmasr.core.audio)
    raw_format: str | None = None
    #: generative error correction after rescoring (an instruct LLM rewrites the N-best list, guarded)
    correct: bool = False
    corrector: str = DEFAULT_CORRECTOR
    #: the guard: the correction is kept only within this share of word edits of some hypothesis
    correct_max_change: float = MAX_CHANGE
    profile: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def pcm_format(self) -> PcmFormat | None:
        """`raw_format` parsed (validated in resolve_options)."""
        return PcmFormat.parse(self.raw_format) if self.raw_format else None


def _profile_name(asr: str, lm: str | None) -> str:
    return f"{asr}+{lm or 'none'}.yaml".replace("/", "_")


def shipped_profile(asr: str, lm: str | None) -> Path | None:
    path = Path(str(files("llmasr").joinpath("profiles").joinpath(_profile_name(asr, lm))))
    return path if path.is_file() else None


def read_yaml_mapping(
    path: str | Path, what: str = "profile", error: type[LlmasrError] = LlmasrError
) -> dict[str, Any]:
    """A YAML file that must hold a mapping (profiles, training recipes); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {what} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise error(f"{p}: not a valid YAML {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{p}: a {what} is a YAML mapping")
    return data


def read_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    data = read_yaml_mapping(p, "profile")
    unknown = set(data) - {f.name for f in fields(Options)} - {"tuned"}
    if unknown:
        raise LlmasrError(f"{p}: unknown profile keys: {', '.join(sorted(unknown))}")
    return data


def write_profile(options: Options, path: str | Path, tuned: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {
        "asr": options.asr,
        "lm": options.lm,
        "nbest": options.nbest,
        "weights": asdict(options.weights),
        "context_tokens": options.context_tokens,
    }
    if tuned:
        data["tuned"] = tuned
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return p


def resolve_options(profile: str | None = None, **overrides: Any) -> Options:
    """Dataclass defaults < shipped profile for the (asr, lm) pair < user profile < explicit values."""
    given = {k: v for k, v in overrides.items() if v is not None}
    user = read_profile(profile) if profile else {}
    asr = given.get("asr", user.get("asr", DEFAULT_ASR))
    lm = given.get("lm", user.get("lm", DEFAULT_LM))
    if isinstance(lm, str) and lm.lower() == "none":
        lm = None
    shipped_path = shipped_profile(asr, lm)
    shipped = read_profile(shipped_path) if shipped_path else {}
    if not shipped and lm is not None:
        shipped = {"weights": dict(UNTUNED_LM_WEIGHTS)}
    merged: dict[str, Any] = {}
    for layer in (shipped, user, given):
        for key, value in layer.items():
            if key == "tuned":
                continue
            if key == "weights" and isinstance(value, dict):
                merged["weights"] = {**merged.get("weights", {}), **value}
            else:
                merged[key] = value
    merged["asr"], merged["lm"] = asr, lm
    weights = merged.pop("weights", {})
    if isinstance(weights, Weights):
        weights = asdict(weights)
    try:
        w = Weights(**weights)
        opts = Options(**merged, weights=w)
    except TypeError as exc:
        raise LlmasrError(f"bad option: {exc}") from exc
    opts.profile = str(profile) if profile else (str(shipped_path) if shipped_path else None)
    if opts.lm is None:
        opts.weights.lm_weight = 0.0
    if opts.nbest < 1:
        raise LlmasrError(f"nbest must be at least 1, got {opts.nbest}")
    if opts.raw_format:
        try:
            opts.pcm_format()
        except ValueError as exc:
            raise LlmasrError(f"--raw-format: {exc}") from None
    if opts.term_retrieval not in TERM_RETRIEVALS:
        raise LlmasrError(
            f"term retrieval '{opts.term_retrieval}': choose one of {', '.join(TERM_RETRIEVALS)}"
        )
    return opts
