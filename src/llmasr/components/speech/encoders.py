"""Pretrained speech encoders as trainable PyTorch modules, behind one small interface.

Offline, the only pretrained speech encoders are the Whisper encoders inside the bundled CTranslate2
models, so this module reads CTranslate2's `model.bin` itself (the layout written by
`ctranslate2/specs/model_spec.py`, `_serialize`) and loads the encoder half into `transformers`'
`WhisperEncoder`. Hugging Face encoders (Whisper, wav2vec2, HuBERT, WavLM) load through the same
`SpeechEncoder` interface, so deep fusion code never cares where the weights came from.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from llmasr.core.audio import SAMPLE_RATE
from llmasr.core.errors import AudioError, ModelError

CT2_BINARY_VERSION = 6
# Position = the type id written to model.bin (CTranslate2's DataType enum, include/ctranslate2/types.h).
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
_NUMPY_DTYPES = {
    "float32": np.float32,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "float16": np.float16,
    "bfloat16": np.int16,  # raw bits; reinterpreted as torch.bfloat16
}
WHISPER_CHUNK_SECONDS = 30
WHISPER_HOP = 160  # samples per mel frame; the encoder halves the frame rate (conv2 stride 2)
WAVEFORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "wav2vec2-conformer", "data2vec-audio")


# --------------------------------------------------------------------------- CTranslate2 model.bin


@dataclass(frozen=True)
class Ct2Variable:
    """One stored variable: where its raw bytes are, and how to interpret them."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass
class Ct2Header:
    """A model.bin's table of contents, read without loading any weights (cheap on big files)."""

    path: Path
    version: int
    spec: str
    revision: int
    variables: dict[str, Ct2Variable]
    aliases: dict[str, str]  # alias name -> stored variable name

    def dtypes(self, prefix: str = "") -> dict[str, int]:
        """How many variables under `prefix` are stored in each dtype (answers 'is it int8?')."""
        return dict(Counter(v.dtype for n, v in self.variables.items() if n.startswith(prefix)))


def _unpack(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _unpack(f, "H")  # length including the trailing NUL
    data = f.read(n)
    if len(data) != n or n == 0:
        raise EOFError
    return data[:-1].decode("utf-8")


def read_ct2_header(path: str | Path) -> Ct2Header:
    """Parse a CTranslate2 `model.bin` header: version, spec name, revision, variables, aliases.

    Layout (little-endian): u32 version, str spec, u32 revision, u32 count, then per variable
    str name, u8 rank, u32 dims[rank], u8 dtype id, u32 nbytes, raw bytes; then u32 alias count and
    (str alias, str target) pairs. A str is u16 length (with NUL) + UTF-8 + NUL.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelError(f"{path}: no CTranslate2 model.bin here")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = _unpack(f, "I")
            if version != CT2_BINARY_VERSION:
                raise ModelError(
                    f"{path}: CTranslate2 binary version {version}; this reader knows version "
                    f"{CT2_BINARY_VERSION} (re-convert the model with a current ctranslate2)"
                )
            spec = _string(f)
            revision = _unpack(f, "I")
            variables: dict[str, Ct2Variable] = {}
            for _ in range(_unpack(f, "I")):
                name = _string(f)
                shape = tuple(_unpack(f, "I") for _ in range(_unpack(f, "B")))
                type_id = _unpack(f, "B")
                if type_id >= len(CT2_DTYPES):
                    raise ModelError(f"{path}: variable {name} has unknown dtype id {type_id}")
                dtype = CT2_DTYPES[type_id]
                nbytes = _unpack(f, "I")
                expected = math.prod(shape) * np.dtype(_NUMPY_DTYPES[dtype]).itemsize
                if nbytes != expected:
                    raise ModelError(
                        f"{path}: variable {name} holds {nbytes} bytes, {shape} {dtype} needs {expected}"
                    )
                variables[name] = Ct2Variable(name, shape, dtype, f.tell(), nbytes)
                f.seek(nbytes, 1)
                if f.tell() > size:
                    raise EOFError
            aliases = {}
            for _ in range(_unpack(f, "I")):
                alias = _string(f)
                aliases[alias] = _string(f)
            trailing = size - f.tell()
    except EOFError:
        raise ModelError(f"{path}: truncated CTranslate2 model.bin") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not a CTranslate2 model.bin (bad variable name)") from None
    if trailing:
        raise ModelError(f"{path}: {trailing} unexpected bytes after the CTranslate2 model data")
    return Ct2Header(path, version, spec, revision, variables, aliases)


def _load_raw(f: BinaryIO, var: Ct2Variable) -> torch.Tensor:
    f.seek(var.offset)
    array = np.frombuffer(f.read(var.nbytes), dtype=_NUMPY_DTYPES[var.dtype]).reshape(var.shape).copy()
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if var.dtype == "bfloat16" else tensor


def read_ct2(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Load the variables of a CTranslate2 `model.bin` (those under `prefix`) as float32 tensors.

    Quantised weights are de-quantised the way the converter quantised them: int8 stores
    `rint(w * scale)` with one `scale = 127 / max|row|` per output row (conv weights flattened to
    rows), int16 one scalar `scale`; so `w = q / scale`. The `..._scale` variables are consumed.
    float16/bfloat16 become float32. Integer variables without a scale are settings, not weights
    (e.g. `encoder/num_heads`) and keep their integer dtype. Aliases (shared weights) map to the
    same tensor as their target.
    """
    header = read_ct2_header(path)
    names = [n for n in header.variables if n.startswith(prefix)]
    zero = [n for n in names if n.endswith("_zero")]
    if zero:
        raise ModelError(f"{header.path}: zero-point (AWQ) quantised weights are not supported ({zero[0]})")
    wanted = set(names) | {t for a, t in header.aliases.items() if a.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    with open(header.path, "rb") as f:
        for name in sorted(wanted):
            if name.endswith("_scale") and name[: -len("_scale")] in header.variables:
                continue
            var = header.variables[name]
            value = _load_raw(f, var)
            scale_var = header.variables.get(f"{name}_scale")
            if scale_var is not None:
                out[name] = _dequantise(value, _load_raw(f, scale_var).float())
            elif value.is_floating_point():
                out[name] = value.float()
            else:
                out[name] = value
    for alias, target in header.aliases.items():
        if alias.startswith(prefix):
            out[alias] = out[target]
    return {n: out[n] for n in sorted(out) if n.startswith(prefix)}


def _dequantise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = q.float()
    if scale.dim() == 0:
        return q / scale
    return (q.reshape(q.shape[0], -1) / scale.reshape(-1, 1)).reshape(q.shape)


# --------------------------------------------------------------------------- the common interface


@dataclass
class EncoderInfo:
    """What was loaded, for logs and for sizing the adapter."""

    name: str
    source: str  # "ctranslate2" or "huggingface"
    model_type: str  # "whisper", "wav2vec2", "hubert", "wavlm", ...
    dim: int
    layers: int
    heads: int
    frames_per_second: float
    input: str  # "mel" (Whisper) or "waveform"
    n_mels: int | None = None
    stored_dtypes: dict[str, int] = field(default_factory=dict)
    parameters: int = 0


class SpeechEncoder(torch.nn.Module):
    """Audio in, hidden frames out: what deep fusion needs, whichever encoder is behind it.

    `features(audio)` turns 16 kHz mono float arrays into the encoder's input batch;
    `forward(features, num_samples)` maps that batch to (B, frames, dim), each input read as if it were
    alone when its sample counts are given; `output_lengths(num_samples)` says how many leading frames
    of an utterance hold real audio, so the adapter can drop the padding.
    """

    dim: int
    frames_per_second: float
    sample_rate: int = SAMPLE_RATE

    def __init__(self, info: EncoderInfo) -> None:
        super().__init__()
        self.info = info
        self.dim = info.dim
        self.frames_per_second = info.frames_per_second

    def features(self, audio: Sequence[np.ndarray]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        """(B, ...) input batch -> (B, frames, dim). `num_samples` (B,): each input's audio samples, so
        that an input's frames do not depend on the others in its batch (None: the batch as it is)."""
        raise NotImplementedError

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Output frames holding real audio, per example, from the audio's sample counts."""
        raise NotImplementedError

    def encode(self, audio: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        """Features, forward and real lengths in one call (convenience for inference)."""
        num_samples = torch.tensor([len(a) for a in audio])
        hidden = self(self.features(audio).to(self._device()), num_samples)
        return hidden, self.output_lengths(num_samples).tolist()

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class WhisperSpeechEncoder(SpeechEncoder):
    """A Whisper encoder: log-mel features padded to 30 s in, 1500 frames (50 per second) out."""

    def __init__(self, encoder: torch.nn.Module, info: EncoderInfo, trim_tail: float | None = None) -> None:
        """`trim_tail`: None encodes the full 30 s window, as Whisper was trained; a number of seconds
        encodes each input's audio plus that much silence (see `features` and `forward`)."""
        super().__init__(info)
        self.encoder = encoder
        self.n_mels = info.n_mels or 80
        self.max_frames = int(encoder.config.max_source_positions)
        self.trim_tail = trim_tail
        self._extractor = None
        self.train(encoder.training)  # follow the loaded module (eval), not nn.Module's default

    @classmethod
    def from_ct2(
        cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, trim_tail: float | None = None
    ) -> WhisperSpeechEncoder:
        """Wrap the encoder of a CTranslate2 Whisper folder (see `load_whisper_encoder`)."""
        module, info = load_whisper_encoder(model_dir, dtype=dtype)
        return cls(module, info, trim_tail=trim_tail)

    def features(self, audio: Sequence[np.ndarray]) -> torch.Tensor:
        """Whisper log-mels exactly as faster-whisper computes them for CTranslate2: (B, n_mels, 3000).

        Audio longer than the 30 s window is an error rather than silently cut.
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.feature_extractor import FeatureExtractor

        if self._extractor is None:
            self._extractor = FeatureExtractor(feature_size=self.n_mels)
        limit = WHISPER_CHUNK_SECONDS * SAMPLE_RATE
        frames = 2 * self.max_frames
        out = []
        for i, a in enumerate(audio):
            a = np.asarray(a, dtype=np.float32).reshape(-1)
            if len(a) > limit:
                raise AudioError(
                    f"audio {i}", f"{len(a) / SAMPLE_RATE:.1f} s is longer than Whisper's 30 s window"
                )
            out.append(pad_or_trim(self._extractor(a), frames))
        batch = torch.from_numpy(np.stack(out).astype(np.float32))
        if self.trim_tail is not None and len(audio):
            longest = max(len(np.asarray(a).reshape(-1)) for a in audio)
            batch = batch[:, :, : self.trimmed_frames(longest)]
        return batch

    def trimmed_frames(self, num_samples: int) -> int:
        """Log-mel frames a trimmed window keeps for an input of `num_samples` samples: its audio plus
        `trim_tail` seconds, an even count (the encoder halves it), at most the 30 s window."""
        assert self.trim_tail is not None
        keep = int(math.ceil((num_samples / SAMPLE_RATE + self.trim_tail) * SAMPLE_RATE / WHISPER_HOP))
        keep = min(2 * self.max_frames, keep)
        return keep + keep % 2

    def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n_mels, F) log-mels -> (B, F / 2, dim). F is 3000 (30 s), or shorter with `trim_tail`:
        then the layers run on the real frames only (transformers' WhisperEncoder insists on 3000), so an
        utterance of a few seconds costs a fraction of the full window. Trimmed states differ a little
        from full-window ones (cosine ~0.95-0.99 with >= 1 s of tail); train and infer with the same mode.

        With `num_samples` (B,) and a trimmed window, each input is read over its own window only (its
        audio plus `trim_tail`), as if alone, even beside an input that fills the 30 s window: the
        log-mels past it are zeroed, as a shorter input's convolution padding would be, and attention
        never sees the frames past it. Whisper's attention has no mask of its own, so without this a
        short input batched with a long one would be read over the long one's padding, and batching
        would change the words.
        """
        frames = features.shape[-1]
        keep = None
        if num_samples is not None and self.trim_tail is not None:
            own = [min(frames, self.trimmed_frames(int(n))) for n in num_samples]
            if min(own) < frames:  # (also when the longest input fills the 30 s window)
                keep = torch.tensor(own, device=features.device)
        if keep is None and frames == 2 * self.max_frames:
            return self.encoder(input_features=features).last_hidden_state
        enc = self.encoder
        dtype = enc.conv1.weight.dtype
        features = features.to(dtype)
        mask = None
        if keep is not None:
            # log-mels past an input's window are zeroed, as its own shorter window's convolution padding
            # would be; the second convolution reads no further than the window for the frames kept
            inside = torch.arange(frames, device=features.device)[None, :] < keep[:, None]
            features = features * inside.unsqueeze(1)
            keys = torch.arange(frames // 2, device=features.device)[None, :] < (keep // 2)[:, None]
            mask = torch.zeros(keys.shape, dtype=dtype, device=features.device)
            mask = mask.masked_fill(~keys, torch.finfo(dtype).min)[:, None, None, :]  # (B, 1, 1, F / 2)
        x = torch.nn.functional.gelu(enc.conv1(features))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        return enc.layer_norm(x)

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames holding real audio: one per 320 samples, rounded up, at most 1500. (Features are
        always padded to 30 s, so only the sample count says how much of the output is real.)"""
        step = 2 * WHISPER_HOP
        return torch.div(torch.as_tensor(num_samples) + step - 1, step, rounding_mode="floor").clamp(
            max=self.max_frames
        )


class WaveformSpeechEncoder(SpeechEncoder):
    """A wav2vec2-family encoder (wav2vec2, HuBERT, WavLM): normalised raw audio in."""

    def __init__(self, model: torch.nn.Module, info: EncoderInfo, normalize: bool = True) -> None:
        super().__init__(info)
        self.model = model
        self.normalize = normalize
        self.train(model.training)

    def features(self, audio: Sequence[np.ndarray]) -> torch.Tensor:
        """Zero-padded (B, samples) batch; each utterance normalised to zero mean, unit variance."""
        arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audio]
        batch = np.zeros((len(arrays), max((len(a) for a in arrays), default=0)), dtype=np.float32)
        for i, a in enumerate(arrays):
            if self.normalize and len(a):
                a = (a - a.mean()) / np.sqrt(a.var() + 1e-7)
            batch[i, : len(a)] = a
        return torch.from_numpy(batch)

    def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        """(B, samples) -> (B, frames, dim). With `num_samples`, models trained with an attention mask
        (feat_extract_norm == "layer", e.g. wav2vec2-large-lv60) get one, so an input is read over its own
        samples only; group-norm models (e.g. wav2vec2-base) expect none and get none (transformers'
        advice: they were trained on zero-padded batches)."""
        mask = None
        if num_samples is not None and getattr(self.model.config, "feat_extract_norm", "group") == "layer":
            positions = torch.arange(features.shape[1], device=features.device)
            mask = (positions[None, :] < torch.as_tensor(num_samples, device=features.device)[:, None]).long()
        return self.model(features, attention_mask=mask).last_hidden_state

    def output_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames the conv front end makes from `num_samples` samples (exact conv arithmetic)."""
        return self.model._get_feat_extract_output_lengths(torch.as_tensor(num_samples))


@torch.no_grad()
def encode_utterances(
    encoder: torch.nn.Module, audio: Sequence[np.ndarray], dtype: torch.dtype = torch.float16
) -> list[np.ndarray]:
    """The audio-holding encoder frames of each input, (T_i, D) in `dtype` (float16 halves a cache)."""
    num_samples = torch.tensor([len(a) for a in audio])
    hidden = encoder(encoder.features(list(audio)), num_samples)  # type: ignore[operator]
    lengths = encoder.output_lengths(num_samples)  # type: ignore[operator]
    return [hidden[i, : int(n)].to(dtype).numpy() for i, n in enumerate(lengths)]


# --------------------------------------------------------------------------- Whisper from CTranslate2


def _ct2_heads(tensors: dict[str, torch.Tensor], config: dict, d_model: int) -> int:
    if "encoder/num_heads" in tensors:
        return int(tensors["encoder/num_heads"])
    if "num_heads" in config:
        return int(config["num_heads"])
    return max(1, d_model // 64)  # every Whisper size uses 64-dim heads


def whisper_encoder_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 encoder variables to `transformers.WhisperEncoder` keys.

    CTranslate2 fuses Q, K and V into `self_attention/linear_0`; the converter filled the missing
    K bias with zeros, and a K bias would not matter anyway (it adds the same q.b to every key's
    score, which softmax cancels), so it is dropped.
    """
    sd = {
        "conv1.weight": tensors["encoder/conv1/weight"],
        "conv1.bias": tensors["encoder/conv1/bias"],
        "conv2.weight": tensors["encoder/conv2/weight"],
        "conv2.bias": tensors["encoder/conv2/bias"],
        "embed_positions.weight": tensors["encoder/position_encodings/encodings"],
        "layer_norm.weight": tensors["encoder/layer_norm/gamma"],
        "layer_norm.bias": tensors["encoder/layer_norm/beta"],
    }
    i = 0
    while f"encoder/layer_{i}/self_attention/linear_0/weight" in tensors:
        src = f"encoder/layer_{i}"
        dst = f"layers.{i}"
        q, k, v = tensors[f"{src}/self_attention/linear_0/weight"].chunk(3, dim=0)
        qb, _kb, vb = tensors[f"{src}/self_attention/linear_0/bias"].chunk(3, dim=0)
        sd.update(
            {
                f"{dst}.self_attn.q_proj.weight": q,
                f"{dst}.self_attn.q_proj.bias": qb,
                f"{dst}.self_attn.k_proj.weight": k,
                f"{dst}.self_attn.v_proj.weight": v,
                f"{dst}.self_attn.v_proj.bias": vb,
                f"{dst}.self_attn.out_proj.weight": tensors[f"{src}/self_attention/linear_1/weight"],
                f"{dst}.self_attn.out_proj.bias": tensors[f"{src}/self_attention/linear_1/bias"],
                f"{dst}.self_attn_layer_norm.weight": tensors[f"{src}/self_attention/layer_norm/gamma"],
                f"{dst}.self_attn_layer_norm.bias": tensors[f"{src}/self_attention/layer_norm/beta"],
                f"{dst}.fc1.weight": tensors[f"{src}/ffn/linear_0/weight"],
                f"{dst}.fc1.bias": tensors[f"{src}/ffn/linear_0/bias"],
                f"{dst}.fc2.weight": tensors[f"{src}/ffn/linear_1/weight"],
                f"{dst}.fc2.bias": tensors[f"{src}/ffn/linear_1/bias"],
                f"{dst}.final_layer_norm.weight": tensors[f"{src}/ffn/layer_norm/gamma"],
                f"{dst}.final_layer_norm.bias": tensors[f"{src}/ffn/layer_norm/beta"],
            }
        )
        i += 1
    return {k: v.contiguous() for k, v in sd.items()}


def load_whisper_encoder(
    model_dir: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, EncoderInfo]:
    """Build a `transformers` WhisperEncoder from a CTranslate2 Whisper folder (model.bin + config.json).

    The config is derived from the tensor shapes (d_model, layers, FFN size, mel bins, positions)
    and the stored head count. Returned in eval mode; training code decides what to unfreeze.
    """
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model_dir = Path(model_dir)
    header = read_ct2_header(model_dir)
    if not header.spec.startswith("Whisper"):
        raise ModelError(f"{model_dir}: CTranslate2 model is a {header.spec}, not a Whisper model")
    tensors = read_ct2(header.path, prefix="encoder/")
    config_path = model_dir / "config.json" if model_dir.is_dir() else header.path.parent / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    try:
        d_model, n_mels, _ = tensors["encoder/conv1/weight"].shape
        max_positions = tensors["encoder/position_encodings/encodings"].shape[0]
        layers = sum(1 for n in tensors if n.endswith("/self_attention/linear_0/weight"))
        ffn = tensors["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        heads = _ct2_heads(tensors, config, d_model)
        state = whisper_encoder_state_dict(tensors)
    except KeyError as exc:
        raise ModelError(f"{model_dir}: CTranslate2 Whisper encoder lacks variable {exc}") from None
    hf_config = WhisperConfig(
        d_model=d_model,
        encoder_layers=layers,
        encoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_layers=1,
        decoder_attention_heads=heads,
        decoder_ffn_dim=ffn,
        num_mel_bins=n_mels,
        max_source_positions=max_positions,
        activation_function="gelu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    with torch.device("meta"):
        encoder = WhisperEncoder(hf_config)
    missing, unexpected = encoder.load_state_dict(state, strict=False, assign=True)
    # k_proj has no bias in Whisper; anything else missing would be left on the meta device.
    if missing or unexpected:
        raise ModelError(
            f"{model_dir}: encoder weights do not fit: missing {missing}, unexpected {unexpected}"
        )
    encoder.embed_positions.requires_grad_(False)
    encoder = encoder.to(dtype).eval()
    info = EncoderInfo(
        name=str(model_dir),
        source="ctranslate2",
        model_type="whisper",
        dim=d_model,
        layers=layers,
        heads=heads,
        frames_per_second=SAMPLE_RATE / (2 * WHISPER_HOP),
        input="mel",
        n_mels=n_mels,
        stored_dtypes=header.dtypes("encoder/"),
        parameters=sum(p.numel() for p in encoder.parameters()),
    )
    return encoder, info


# --------------------------------------------------------------------------- Hugging Face encoders


def load_hf_encoder(name: str, dtype: torch.dtype = torch.float32) -> SpeechEncoder:
    """Load a Hugging Face speech encoder by id or folder: Whisper (encoder half) or wav2vec2-family."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"speech encoder '{name}' cannot be loaded: {_first_line(exc)}") from None
    model_type = getattr(config, "model_type", "")
    try:
        if model_type == "whisper":
            whole = transformers.WhisperModel.from_pretrained(name, dtype=dtype)
            module = whole.get_encoder().eval()
            info = EncoderInfo(
                name=name,
                source="huggingface",
                model_type=model_type,
                dim=config.d_model,
                layers=config.encoder_layers,
                heads=config.encoder_attention_heads,
                frames_per_second=SAMPLE_RATE / (2 * WHISPER_HOP),
                input="mel",
                n_mels=config.num_mel_bins,
                stored_dtypes=_param_dtypes(module),
                parameters=sum(p.numel() for p in module.parameters()),
            )
            return WhisperSpeechEncoder(module, info)
        if model_type in WAVEFORM_MODEL_TYPES:
            model = transformers.AutoModel.from_pretrained(name, dtype=dtype).eval()
            info = EncoderInfo(
                name=name,
                source="huggingface",
                model_type=model_type,
                dim=config.hidden_size,
                layers=config.num_hidden_layers,
                heads=config.num_attention_heads,
                frames_per_second=SAMPLE_RATE / math.prod(config.conv_stride),
                input="waveform",
                stored_dtypes=_param_dtypes(model),
                parameters=sum(p.numel() for p in model.parameters()),
            )
            return WaveformSpeechEncoder(model, info, normalize=_wants_normalize(name))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"speech encoder '{name}' cannot be loaded: {_first_line(exc)}") from None
    known = ", ".join(("whisper",) + WAVEFORM_MODEL_TYPES)
    raise ModelError(
        f"'{name}' is a {model_type or 'unknown'} model, not a supported speech encoder ({known})"
    )


def _wants_normalize(name: str) -> bool:
    """The checkpoint's own `do_normalize` when it ships a feature extractor config; else True."""
    try:
        import transformers

        return bool(getattr(transformers.AutoFeatureExtractor.from_pretrained(name), "do_normalize", True))
    except (OSError, ValueError):
        return True


def _param_dtypes(module: torch.nn.Module) -> dict[str, int]:
    return dict(Counter(str(p.dtype).replace("torch.", "") for p in module.parameters()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- dispatch


def load_encoder(
    name_or_path: str, dtype: torch.dtype = torch.float32, trim_tail: float | None = None
) -> SpeechEncoder:
    """A recogniser's name or folder, resolved as `--asr` is: CTranslate2 Whisper (named models, folders
    with model.bin) loads from model.bin; a Hugging Face id or folder through transformers.
    `trim_tail` (Whisper only): encode the audio plus this many seconds of silence, not 30 s."""
    from llmasr.models.registry import resolve

    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == "model.bin":
        name_or_path = str(path.parent)
    kind, location = resolve(name_or_path, "asr")
    if kind == "whisper":
        return WhisperSpeechEncoder.from_ct2(location, dtype=dtype, trim_tail=trim_tail)
    if kind == "hf-asr":
        encoder = load_hf_encoder(location, dtype=dtype)
        if isinstance(encoder, WhisperSpeechEncoder):
            encoder.trim_tail = trim_tail
        return encoder
    raise ModelError(f"'{name_or_path}' is a {kind} recogniser, not a speech encoder (use a Whisper model)")
