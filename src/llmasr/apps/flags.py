"""The recognition flags, declared once and shared by `transcribe`, `eval`, `tune`, `batch` and `serve`.

Each flag is a flat option name of llmasr.decoding.options (FLAT, or a single weight); `with_run_flags`
adds the flags to a Typer command's signature and hands the command a `run_flags` dict of the ones the
user set (None means "not given", so profiles and record defaults apply). `options_from_flags` turns that
dict into validated Options. Adding an option is one field in a record plus one Flag here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from llmasr.core.text import TERMS_FORMAT

PANEL = "Recognition options"


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its option name, declarations, type and help."""

    name: str
    decls: tuple[str, ...]
    type: Any
    help: str


RUN_FLAGS: tuple[Flag, ...] = (
    Flag("asr", ("--asr",), str | None, "Recogniser: a named model (llmasr models list), a CTranslate2 "
         "Whisper folder, a HF Whisper id, or a trained speech-LLM (folder or name)."),
    Flag("lm", ("--lm",), str | None, "Rescoring LM: a named model, a HF id, a local folder, or 'none'. "
         "Default: gemma-3-270m-rescorer (trained); gemma-3-270m when --prompt or --terms is given; "
         "none for a recogniser tuned only without one (a speech-LLM with its CTC head); "
         "none: re-ranking by the recogniser's score and a word bonus only."),
    Flag("nbest", ("--nbest",), int | None, "Hypotheses per segment (default 8, or the tuned profile's: "
         "4 for a speech-LLM joined with its CTC head; the CTC head gives at most 8)."),
    Flag("prompt", ("--prompt",), str | None, "Domain description; conditions the LLM (and the recogniser)."),
    Flag("terms", ("--terms",), Path | None, f"Term list file. {TERMS_FORMAT}."),
    Flag("profile", ("--profile",), Path | None, "Tuned profile (YAML) from `llmasr tune`."),
    Flag("preset", ("--preset",), str | None, "A named configuration: fast (the recogniser's own pick), "
         "default (its 8-best rescored by the trained rescorer), or accurate (whisper-tiny.en and "
         "whisper-base combined, then rescored)."),
    Flag("lm_weight", ("--lm-weight",), float | None, "Weight of the LM score."),
    Flag("word_bonus", ("--word-bonus",), float | None, "Score added per word."),
    Flag("agreement_weight", ("--agreement-weight",), float | None, "Weight of N-best word agreement."),
    Flag("threads", ("--threads",), int | None, "CPU threads per model (0 = all)."),
    Flag("asr_prompt", ("--asr-prompt/--no-asr-prompt",), bool | None,
         "Also prompt the recogniser with the domain text and terms."),
    Flag("lm_dtype", ("--lm-dtype",), str | None,
         "LLM precision: auto (bf16 where native), float32, bfloat16, float16."),
    Flag("max_terms", ("--max-terms",), int | None,
         "Terms per segment; longer lists are narrowed by retrieval (0: all)."),
    Flag("term_retrieval", ("--term-retrieval",), str | None,
         "How a long --terms list is narrowed per segment: speech (the trained speech-to-entity "
         "retriever; the default), text (from a first decoding) or both (their rankings interleaved)."),
    Flag("retriever", ("--retriever",), str | None,
         "With --term-retrieval speech or both: a retriever (named or folder)."),
    Flag("correct", ("--correct/--no-correct",), bool | None,
         "Generative error correction: an instruct LLM rewrites the N-best list (guarded)."),
    Flag("corrector", ("--corrector",), str | None,
         "With --correct: the LLM that corrects (a named model, HF id, folder)."),
    Flag("correct_max_change", ("--correct-max-change",), float | None,
         "With --correct: keep a correction only within this share of word edits of some hypothesis."),
    Flag("raw_format", ("--raw-format",), str | None,
         "Format of headerless inputs (.raw, .pcm, ...): ENCODING:RATE[:CHANNELS], e.g. s16le:8000, "
         "mulaw:8000 (s8 u8 s16le s16be s24le s32le f32le f64le mulaw alaw). Files with a header are read "
         "from it."),
    Flag("batch_size", ("--batch-size",), int | None, "Segments decoded together by the recogniser."),
)  # fmt: skip
FLAG_NAMES = tuple(f.name for f in RUN_FLAGS)


def with_run_flags(exclude: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Typer command whose function takes `run_flags: dict`: the command gets every RUN_FLAG
    (but `exclude`) as an option, and receives the values in `run_flags`."""
    flags = [f for f in RUN_FLAGS if f.name not in exclude]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)  # the command's own annotations, resolved
        own = [p for p in signature.parameters.values() if p.name != "run_flags"]
        added = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[f.type, typer.Option(*f.decls, help=f.help, rich_help_panel=PANEL)],
            )
            for f in flags
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            run_flags = {f.name: kwargs.pop(f.name, None) for f in flags}
            return command(*args, run_flags=run_flags, **kwargs)

        params = own + added
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


def options_from_flags(run_flags: dict[str, Any], **extra: Any) -> Any:
    """Validated Options from the flags the user set (plus `extra` flat values); the term list is read
    from its file. Raises LlmasrError (a bad file, a bad value, an option that cannot act)."""
    from llmasr.core.text import read_terms
    from llmasr.decoding.options import resolve_options

    values = {k: v for k, v in {**run_flags, **extra}.items() if v is not None}
    profile = values.pop("profile", None)
    if "terms" in values and isinstance(values["terms"], (str, Path)):
        values["terms"] = read_terms(values["terms"])
    return resolve_options(profile=str(profile) if profile else None, **values)
