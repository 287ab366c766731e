"""Recognisers by kind: the one place a model name becomes a loaded `Recognizer`.

`llmasr.models.registry.resolve(name, "asr")` turns a user's `--asr` value (a named model, a folder, a
Hugging Face id) into (kind, location); RECOGNIZERS maps the kind to its loader. Adding a recogniser is
one module with a class that has `nbest` and `align` (llmasr.components.asr.base.Recognizer) plus one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmasr.components.asr.base import Recognizer
from llmasr.core.errors import ModelError


@dataclass(frozen=True)
class LoadSettings:
    """How to load a recogniser: device, CPU threads, replicas that may decode at once."""

    device: str = "cpu"
    threads: int = 0
    workers: int = 1


def _whisper(location: str, name: str, s: LoadSettings, log: Any) -> Recognizer:
    from llmasr.components.asr.whisper import WhisperRecognizer

    return WhisperRecognizer(location, name=name, device=s.device, threads=s.threads, workers=s.workers)


def _hf_whisper(location: str, name: str, s: LoadSettings, log: Any) -> Recognizer:
    """A Hugging Face Whisper (hub id or transformers folder): converted to CTranslate2 once, cached."""
    from llmasr.components.asr.convert import convert_hf_whisper

    return _whisper(str(convert_hf_whisper(location, log=log)), name, s, log)


def _pocketsphinx(location: str, name: str, s: LoadSettings, log: Any) -> Recognizer:
    from llmasr.components.asr.pocketsphinx import PocketsphinxRecognizer

    return PocketsphinxRecognizer()


def _ctc(location: str, name: str, s: LoadSettings, log: Any) -> Recognizer:
    from llmasr.components.asr.ctc import CtcRecognizer

    return CtcRecognizer(location, name=name, device=s.device)


def _speechllm(location: str, name: str, s: LoadSettings, log: Any) -> Recognizer:
    from llmasr.components.asr.speechllm import SpeechLlmRecognizer

    return SpeechLlmRecognizer.load(location, name=name, device=s.device)


RECOGNIZERS: dict[str, Callable[[str, str, LoadSettings, Any], Recognizer]] = {
    "whisper": _whisper,
    "hf-asr": _hf_whisper,
    "pocketsphinx": _pocketsphinx,
    "ctc": _ctc,
    "speechllm": _speechllm,
}


def load_recognizer(
    name: str, settings: LoadSettings | None = None, log: Callable[[str], None] | None = None
) -> Recognizer:
    """The recogniser `name` resolves to (see the module doc); "A,B" combines recognisers
    (llmasr.components.asr.combined). Raises ModelError naming the model."""
    from llmasr.models.registry import resolve

    if "," in name:
        from llmasr.components.asr.combined import CombinedRecognizer

        parts = [p.strip() for p in name.split(",")]
        if any(not p for p in parts) or len(set(parts)) != len(parts):
            raise ModelError(f"--asr '{name}': give distinct recognisers separated by commas")
        return CombinedRecognizer([load_recognizer(p, settings, log) for p in parts])

    kind, location = resolve(name, "asr", log=log)
    loader = RECOGNIZERS.get(kind)
    if loader is None:
        raise ModelError(f"'{name}' resolved to an unknown recogniser kind '{kind}'")
    return loader(location, name, settings or LoadSettings(), log)
