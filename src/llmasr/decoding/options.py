"""Options of a transcription run: one record per concern, and the one place defaults live.

    Options
      decoding    DecodingOptions    the first pass: recogniser, N-best size, batching, threads, input
      rescoring   RescoringOptions   the rescoring LM, its log-linear weights, context budget, precision
      context     ContextOptions     domain prompt, term list and how a long list is narrowed per segment
      correction  CorrectionOptions  generative error correction after rescoring

Users name options flat (`--lm-weight`, `nbest:` in a profile, `llmasr.transcribe(nbest=4)`); FLAT says
which record holds each name. Layers: record defaults < the shipped profile of the (asr, lm) pair < a
preset (PRESETS: --preset fast|default|accurate) < a user profile < explicit values (`resolve_options`). An
explicit option that cannot act in the chosen configuration is an error that says why (`check_options`,
and `Pipeline` for what depends on the recogniser), so nothing a user asks for is silently dropped.

A profile (YAML, flat names) holds tuned weights for an (asr, lm) pair; `llmasr tune` writes one and the
package ships those tuned on dev speech (`llmasr/profiles/`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from llmasr.core.audio import MAX_DURATION, PcmFormat
from llmasr.core.errors import LlmasrError
from llmasr.core.files import read_yaml_mapping
from llmasr.decoding.correct import MAX_CHANGE
from llmasr.decoding.rescore import Weights

DEFAULT_ASR = "whisper-tiny.en"
#: the trained rescorer by default: on the 110 real dev utterances (5-fold cross-validated), whisper-tiny.en's
#: 8-best rescored by gemma-3-270m-rescorer (trained on merged two-recogniser lists of Kokoro and
#: flite/espeak-ng speech) gives 4.61% against 5.20% re-ranked with no LM and 5.78% for the first pass,
#: at 1.6x the first pass's cost (docs/results.md, "Choosing the default on real speech")
DEFAULT_LM: str | None = "gemma-3-270m-rescorer"
#: the LM when a domain prompt or term list is given (and no LM named): on the domain set with a prompt
#: and a 226-term list, gemma-3-270m + speech term retrieval gives WER 7.90% / entity recall 0.881
#: against 8.62% / 0.841 without an LM
DEFAULT_CONTEXT_LM = "gemma-3-270m"
DEFAULT_CORRECTOR = "smollm2-135m-corrector"
DEFAULT_RETRIEVER = "retriever-tiny"
TERM_RETRIEVALS = ("text", "speech", "both")
LM_DTYPES = ("auto", "float32", "bfloat16", "float16")
#: weights for an LM with no tuned profile (a Hugging Face id, a local folder): those tuned for
#: whisper-tiny.en + gemma-3-270m, a sensible start until `llmasr tune` is run for that pair
UNTUNED_LM_WEIGHTS = {"lm_weight": 0.2, "word_bonus": 1.5, "agreement_weight": 1.0}


#: named configurations (flat names), chosen by cross-validated WER on real dev speech within a cost
#: budget relative to the recogniser's own first pass (docs/results.md, benchmarks/rescoring.py):
#: fast = the recogniser's own pick; default = the best within 2x (1.6x); accurate = the best within 4x (3.9x)
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"lm": None, "nbest": 1},
    "default": {},
    "accurate": {"asr": "whisper-tiny.en,whisper-base"},
}


class OptionError(LlmasrError):
    """An option value that cannot be used, or an option that cannot act where it was given."""


@dataclass
class DecodingOptions:
    """The first pass."""

    #: recogniser: a named model, a CTranslate2 Whisper folder, a HF Whisper id, a speech-LLM folder
    asr: str = DEFAULT_ASR
    #: hypotheses per segment
    nbest: int = 8
    #: segments decoded together
    batch_size: int = 8
    #: CPU threads per model (0: all)
    threads: int = 0
    device: str = "cpu"
    #: first-pass model replicas that can decode at the same time (the server sets its concurrency)
    asr_workers: int = 1
    #: longest input (seconds)
    max_duration: float = MAX_DURATION
    #: format of headerless inputs (.raw, .pcm): ENCODING:RATE[:CHANNELS], e.g. s16le:8000
    raw_format: str | None = None

    def pcm_format(self) -> PcmFormat | None:
        """`raw_format` parsed (validated by `check_options`)."""
        return PcmFormat.parse(self.raw_format) if self.raw_format else None


@dataclass
class RescoringOptions:
    """The LM that rescores each N-best list, and how its score is combined."""

    #: a named model, a HF id, a local folder; None: no LM (the recogniser's score, word bonus, agreement)
    lm: str | None = DEFAULT_LM
    weights: Weights = field(default_factory=Weights)
    #: LM tokens of previous segments that condition the next one (long-form carry-over)
    context_tokens: int = 128
    #: LLM precision: auto (bfloat16 where the hardware has it natively, else float32), float32, bfloat16
    lm_dtype: str = "auto"


@dataclass
class ContextOptions:
    """What conditions recognition and rescoring besides the audio."""

    #: domain description (conditions the LLM; also the recogniser with `asr_prompt`)
    prompt: str | None = None
    terms: list[str] = field(default_factory=list)
    #: also give the domain prompt and terms to the recogniser (Whisper's initial prompt)
    asr_prompt: bool = True
    #: terms per segment; a longer list is narrowed per segment by term retrieval (0: the whole list)
    max_terms: int = 12
    #: how that narrowing picks terms: "speech" (the trained speech-to-entity retriever reads the audio;
    #: one decoding; on the domain sets entity recall 0.88 against 0.71 for "text"), "text" (from a first
    #: decoding's words) or "both" (the two rankings interleaved; two decodings)
    term_retrieval: str = "speech"
    retriever: str = DEFAULT_RETRIEVER


@dataclass
class CorrectionOptions:
    """Generative error correction: an instruct LLM rewrites the N-best list after rescoring, guarded."""

    enabled: bool = False
    corrector: str = DEFAULT_CORRECTOR
    #: the guard: a correction is kept only within this share of word edits of some hypothesis
    max_change: float = MAX_CHANGE


@dataclass
class Options:
    decoding: DecodingOptions = field(default_factory=DecodingOptions)
    rescoring: RescoringOptions = field(default_factory=RescoringOptions)
    context: ContextOptions = field(default_factory=ContextOptions)
    correction: CorrectionOptions = field(default_factory=CorrectionOptions)
    #: the profile whose values were used (a user's, or the shipped one of the pair)
    profile: str | None = None
    #: flat names the caller set explicitly (not defaults or profiles): the ones `check_options` judges
    given: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["given"] = sorted(self.given)
        return data

    def flat(self) -> dict[str, Any]:
        """Every option by its flat name (what a profile or `resolve_options` takes)."""
        return {name: getattr(getattr(self, section), attr) for name, (section, attr) in FLAT.items()}


#: flat option name -> (record, field): the names of the CLI flags, profiles and the Python API
FLAT: dict[str, tuple[str, str]] = {
    **{f.name: ("decoding", f.name) for f in fields(DecodingOptions)},
    **{f.name: ("rescoring", f.name) for f in fields(RescoringOptions)},
    **{f.name: ("context", f.name) for f in fields(ContextOptions)},
    "correct": ("correction", "enabled"),
    "corrector": ("correction", "corrector"),
    "correct_max_change": ("correction", "max_change"),
}
#: the weights, also settable one by one by flat name (`--lm-weight`, `lm_weight=`)
WEIGHT_NAMES = tuple(f.name for f in fields(Weights))
LM_WEIGHT_NAMES = ("lm_weight", "lm_norm_weight", "lm_word_weight")


def make_options(given: frozenset[str] | None = None, **flat: Any) -> Options:
    """Options from flat names over the record defaults (no profiles). Raises OptionError for unknown
    names or values of the wrong kind."""
    unknown = sorted(set(flat) - set(FLAT) - set(WEIGHT_NAMES))
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(unknown)}; known: {', '.join(sorted(FLAT))}")
    sections: dict[str, dict[str, Any]] = {"decoding": {}, "rescoring": {}, "context": {}, "correction": {}}
    weights = flat.pop("weights", None)
    if isinstance(weights, Weights):
        weights = asdict(weights)
    weights = dict(weights or {})
    for name in WEIGHT_NAMES:
        if name in flat:
            weights[name] = flat.pop(name)
    for name, value in flat.items():
        section, attr = FLAT[name]
        sections[section][attr] = value
    try:
        sections["rescoring"]["weights"] = Weights(**{k: float(v) for k, v in weights.items()})
        opts = Options(
            decoding=DecodingOptions(**sections["decoding"]),
            rescoring=RescoringOptions(**sections["rescoring"]),
            context=ContextOptions(**sections["context"]),
            correction=CorrectionOptions(**sections["correction"]),
        )
    except (TypeError, ValueError) as exc:
        raise OptionError(f"bad option: {exc}") from None
    opts.given = frozenset(given or ())
    return opts


def _profile_name(asr: str, lm: str | None) -> str:
    return f"{asr}+{lm or 'none'}.yaml".replace("/", "_")


def shipped_profile(asr: str, lm: str | None) -> Path | None:
    path = Path(str(files("llmasr").joinpath("profiles").joinpath(_profile_name(asr, lm))))
    return path if path.is_file() else None


def read_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    data = read_yaml_mapping(p, "profile")
    unknown = set(data) - set(FLAT) - {"tuned"}
    if unknown:
        raise OptionError(f"{p}: unknown profile keys: {', '.join(sorted(unknown))}")
    return data


def write_profile(options: Options, path: str | Path, tuned: dict[str, Any] | None = None) -> Path:
    """The tunable part of `options` (recogniser, LM, N-best size, weights, context budget) as YAML."""
    data: dict[str, Any] = {
        "asr": options.decoding.asr,
        "lm": options.rescoring.lm,
        "nbest": options.decoding.nbest,
        "weights": asdict(options.rescoring.weights),
        "context_tokens": options.rescoring.context_tokens,
    }
    if tuned:
        data["tuned"] = tuned
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return p


#: no LM named anywhere (None there means 'no LM')
_UNSET = object()


def resolve_options(profile: str | None = None, preset: str | None = None, **overrides: Any) -> Options:
    """Record defaults < shipped profile for the (asr, lm) pair < preset < user profile < explicit values
    (the preset, user profile and explicit values choose the pair). With no LM named anywhere: the
    default LM (the context LM with a prompt or term list), or none when the recogniser ships a profile
    tuned without an LM and none for the default LM (a speech-LLM joined with its CTC head).

    `overrides` are flat names (FLAT, or single weights such as lm_weight); None means "not given".
    Raises OptionError for bad values, an unknown preset, and for explicit options that cannot act (see
    check_options).
    """
    if preset is not None and preset not in PRESETS:
        raise OptionError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    weights_given = given.pop("weights", None) or {}
    weights_given = asdict(weights_given) if isinstance(weights_given, Weights) else dict(weights_given)
    for name in WEIGHT_NAMES:
        if name in given:
            weights_given[name] = given.pop(name)
    user = read_profile(profile) if profile else {}
    asr = given.get("asr", user.get("asr", base.get("asr", DEFAULT_ASR)))
    # the trained rescorer unless an LM is named; with a domain prompt or term list zero-shot gemma,
    # measured there (DEFAULT_CONTEXT_LM)
    with_context = any(given.get(k) or user.get(k) for k in ("prompt", "terms"))
    lm = given.get("lm", user.get("lm", base.get("lm", _UNSET)))
    if lm is _UNSET:
        lm = DEFAULT_CONTEXT_LM if with_context else DEFAULT_LM
        if not with_context and shipped_profile(asr, lm) is None and shipped_profile(asr, None):
            # the recogniser was tuned without an LM and not with the default one (e.g. a speech-LLM
            # joined with its CTC head): its tuned configuration is the default
            lm = None
    if isinstance(lm, str) and lm.lower() == "none":
        lm = None
    shipped_path = shipped_profile(asr, lm)
    shipped = read_profile(shipped_path) if shipped_path else {}
    if not shipped and lm is not None:
        shipped = {"weights": dict(UNTUNED_LM_WEIGHTS)}
    merged: dict[str, Any] = {}
    weights: dict[str, float] = {}
    # the preset picks the pair, then the pair's profile gives its tuned weights; what the preset sets
    # itself (e.g. nbest 1) is not undone by the profile
    for layer in (shipped, base, user, {**given, "weights": weights_given}):
        for key, value in layer.items():
            if key == "tuned":
                continue
            if key == "weights":
                if isinstance(value, Weights):
                    value = asdict(value)
                if not isinstance(value, dict):
                    raise OptionError(f"weights: expected a mapping of weight names, got {value!r}")
                weights.update(value)
            else:
                merged[key] = value
    merged["asr"], merged["lm"] = asr, lm
    names = set(given) | set(weights_given)
    opts = make_options(given=frozenset(names), weights=weights, **merged)
    opts.profile = str(profile) if profile else (str(shipped_path) if shipped_path else None)
    if opts.rescoring.lm is None:
        for name in LM_WEIGHT_NAMES:
            setattr(opts.rescoring.weights, name, 0.0)
    check_options(opts)
    return opts


def check_options(opts: Options) -> None:
    """Values in range, and no explicit option that cannot act in this configuration (OptionError
    saying why). Checks that need the loaded recogniser are the Pipeline's."""
    d, r, c, k = opts.decoding, opts.rescoring, opts.context, opts.correction
    if d.nbest < 1:
        raise OptionError(f"nbest must be at least 1, got {d.nbest}")
    if d.batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {d.batch_size}")
    if d.raw_format:
        try:
            d.pcm_format()
        except ValueError as exc:
            raise OptionError(f"--raw-format: {exc}") from None
    if c.term_retrieval not in TERM_RETRIEVALS:
        raise OptionError(f"term retrieval '{c.term_retrieval}': choose one of {', '.join(TERM_RETRIEVALS)}")
    if r.lm_dtype not in LM_DTYPES:
        raise OptionError(f"--lm-dtype '{r.lm_dtype}': choose one of {', '.join(LM_DTYPES)}")
    if not 0.0 <= k.max_change <= 1.0:
        raise OptionError(f"--correct-max-change {k.max_change}: a share of words, from 0 to 1")
    given = opts.given
    if r.lm is None:
        idle = [n for n in ("lm_dtype", "context_tokens", *LM_WEIGHT_NAMES) if n in given]
        if idle:
            raise OptionError(
                f"--{_flag(idle[0])} has no effect without an LM (--lm none or --preset fast): "
                "name one with --lm, e.g. --lm gemma-3-270m"
            )
    if not k.enabled:
        idle = [n for n in ("corrector", "correct_max_change") if n in given]
        if idle:
            raise OptionError(f"--{_flag(idle[0])} acts only with --correct")
    if "retriever" in given and c.term_retrieval == "text":
        raise OptionError("--retriever acts only with --term-retrieval speech or both")


def _flag(name: str) -> str:
    return name.replace("_", "-")
