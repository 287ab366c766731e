"""Hugging Face Whisper -> CTranslate2, once, into the cache.

`--asr` takes a hub id or a transformers folder; our recogniser runs on CTranslate2, so such a model
is converted the first time it is used and the converted folder is reused afterwards (also offline,
for a hub id converted while online). Conversion builds in a temp folder and is renamed into place,
so an interrupted run leaves nothing half-made.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmasr.core.errors import ModelError
from llmasr.models.registry import READY, build_into, home

#: int8 weights, float32 for the rest: matches the recogniser's default compute type, 4x smaller on disk
QUANTIZATION = "int8_float32"
#: files faster-whisper reads beside model.bin: the fast tokenizer, and the feature extractor (n_mels)
EXTRA_FILES = ("tokenizer.json", "preprocessor_config.json")


def _is_local(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def _safe_name(model: str) -> str:
    """A folder name for the converted model: readable, and distinct for distinct sources."""
    if _is_local(model):
        path = Path(model).expanduser().resolve()
        digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:10]
        base = f"{path.name or 'model'}-{digest}"
    else:
        base = model.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"


def _fingerprint(model: str) -> str:
    """Names, sizes and mtimes of a local folder's files: a changed source gets converted again."""
    if not _is_local(model):
        return model
    root = Path(model).expanduser()
    entries = sorted(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in root.iterdir() if p.is_file()
    )
    return hashlib.sha1("\n".join(entries).encode("utf-8")).hexdigest()


def _offline_error(model: str, exc: BaseException) -> ModelError:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelError(
        f"could not fetch Hugging Face model '{model}' (offline, or no such model?): {detail} "
        "Pass a local transformers folder instead (a Whisper model saved with save_pretrained)."
    )


def _fetch(model: str, filename: str) -> str | None:
    """Local path of one file of the model, or None when the model has no such file."""
    if _is_local(model):
        path = Path(model).expanduser() / filename
        return str(path) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id=model, filename=filename)
    except LocalEntryNotFoundError as exc:  # offline and not cached: we cannot tell it is absent
        raise _offline_error(model, exc) from exc
    except EntryNotFoundError:
        return None
    except OSError as exc:  # connection problems, unknown repo
        raise _offline_error(model, exc) from exc


def _load_config(model: str) -> Any:
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(model)
    except OSError as exc:
        if _is_local(model):
            raise ModelError(f"'{model}' is not a transformers model folder: {exc}") from exc
        raise _offline_error(model, exc) from exc
    except (ValueError, KeyError) as exc:  # unknown model_type
        raise ModelError(f"cannot read the configuration of '{model}': {exc}") from exc


#: tokens faster-whisper looks up by name; a tokenizer without them is not a Whisper tokenizer
WHISPER_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")


def _check_tokenizer(model: str, tokenizer: Any) -> None:
    missing = [t for t in WHISPER_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        raise ModelError(
            f"the tokenizer of '{model}' is not a Whisper tokenizer (lacks {', '.join(missing)}); "
            "faster-whisper needs Whisper's tokenizer.json: add it to the model"
        )


def _fast_tokenizer(model: str) -> Any:
    """The `tokenizers.Tokenizer` behind the model's tokenizer files, for models without tokenizer.json."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    except Exception as exc:  # transformers raises many kinds here
        raise ModelError(
            f"'{model}' has no tokenizer.json and no tokenizer files transformers can load ({exc}); "
            "faster-whisper needs tokenizer.json: add the Whisper tokenizer files to the model"
        ) from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # transformers 5 builds an empty tokenizer when a folder has no tokenizer files at all
    if backend is None or backend.get_vocab_size() <= len(WHISPER_TOKENS):
        raise ModelError(
            f"'{model}' has no tokenizer.json and no tokenizer files (vocab.json, merges.txt) to build one "
            "from; faster-whisper needs tokenizer.json: add the Whisper tokenizer files to the model"
        )
    _check_tokenizer(model, backend)
    return backend


def _is_ready(dest: Path, fingerprint: str) -> bool:
    marker = dest / READY
    if not marker.is_file() or not (dest / "model.bin").is_file():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def convert_hf_whisper(model: str, log: Callable[[str], None] | None = None) -> Path:
    """Return a CTranslate2 folder for a Hugging Face Whisper (hub id or local folder), converting it once.

    The folder holds model.bin, tokenizer.json and (when the source has one) preprocessor_config.json,
    which is what faster-whisper loads without touching the network.
    """
    dest = home() / "converted" / _safe_name(model)
    fingerprint = _fingerprint(model)
    if _is_ready(dest, fingerprint):
        return dest

    config = _load_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type != "whisper":
        raise ModelError(
            f"'{model}' is a '{model_type}' model: only Whisper-architecture models are supported "
            "as the first pass for now"
        )
    found = {name: _fetch(model, name) for name in EXTRA_FILES}
    copy_files = [name for name, path in found.items() if path is not None]
    backend = None
    if found["tokenizer.json"] is not None:
        from tokenizers import Tokenizer

        try:
            _check_tokenizer(model, Tokenizer.from_file(found["tokenizer.json"]))
        except Exception as exc:  # a corrupt file: tokenizers raises its own Exception type
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"cannot read tokenizer.json of '{model}': {exc}") from exc
    else:
        backend = _fast_tokenizer(model)

    from ctranslate2.converters import TransformersConverter

    if log:
        log(f"converting {model} to CTranslate2 into {dest} (once)")

    def build(out: Path) -> None:
        try:
            TransformersConverter(model, copy_files=copy_files, load_as_float16=False).convert(
                str(out), quantization=QUANTIZATION, force=True
            )
        except OSError as exc:
            if _is_local(model):
                raise ModelError(f"cannot convert '{model}': {exc}") from exc
            raise _offline_error(model, exc) from exc
        except (RuntimeError, ValueError, NotImplementedError, KeyError, AttributeError) as exc:
            raise ModelError(f"cannot convert Whisper model '{model}' to CTranslate2: {exc}") from exc
        if backend is not None:
            backend.save(str(out / "tokenizer.json"))
        if not (out / "preprocessor_config.json").exists():
            # without it faster-whisper assumes 80 mel bins; large-v3 and its fine-tunes use 128
            n_mels = int(getattr(config, "num_mel_bins", 80))
            (out / "preprocessor_config.json").write_text(
                json.dumps({"feature_size": n_mels}), encoding="utf-8"
            )

    build_into(dest, build, {"source": model, "fingerprint": fingerprint, "quantization": QUANTIZATION})
    return dest
