"""SpeechLLM: speech encoder -> adapter -> causal LM that writes the transcript.

The adapter stacks frames, compresses them with CTC, or feeds gated cross-attention blocks.

The audio embeddings take the place of an `<audio>` placeholder in a text prompt, e.g.

    [BOS] <audio x n> "\\nTranscribe the speech.\\nDomain: ...\\nTerms: a, b\\n" transcript [EOS]

Prompt parts are embedded with the LLM's own input embeddings and the adapter's output is spliced
in between, per example, since each example has its own number of audio frames. Training batches
are right-padded (labels only on transcript tokens and EOS); generation batches are left-padded,
so that every row's next token comes from its last column and `generate` can use its KV cache.
The LLM stays frozen; LoRA (through peft) and the adapter are what trains.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from llmasr.components.lm.lora import LoraSettings, base_causal_lm, with_lora
from llmasr.components.speech.adapters import AdapterOutput, build_adapter
from llmasr.components.speech.ctc_head import ctc_targets
from llmasr.components.speech.xattn import XAttnFusion
from llmasr.core.errors import ModelError
from llmasr.core.text import NO_REPEAT_NGRAM

AUDIO_PLACEHOLDER = "<audio>"
DEFAULT_TEMPLATE = "<audio>\nTranscribe the speech.{prompt_suffix}\n"
IGNORE = -100  # label of positions that carry no loss (prompt, audio, padding)
#: prefix: audio embeddings in the prompt; xattn: gated cross-attention blocks
FUSIONS = ("prefix", "xattn")
#: the text a speech-LLM writes (SpeechLlmConfig.transcript_form)
TRANSCRIPT_FORMS = ("written", "normalized")


@dataclass
class SpeechLlmConfig:
    """What a speech-LLM is: encoder, (optional) token CTC head and LLM by name, adapter, fusion, LoRA.

    Names resolve like every model option (a named model, a folder, a Hugging Face id); `head` is the
    folder of a trained `TokenCtcHead` (or the name of a shipped one). This is the `model:` section of a
    training recipe and is saved beside every checkpoint, so a checkpoint always rebuilds into the model
    it was trained as.
    """

    encoder: str = "whisper-tiny.en"
    #: the encoder's window: None = Whisper's full 30 s; seconds = the audio plus that much silence
    trim_tail: float | None = None
    lm: str = "gemma-3-270m"
    #: a trained token CTC head between encoder and adapter (adapter `ctc` needs one; `stack` may use one)
    head: str | None = None
    adapter: str = "stack"
    #: keyword arguments of the adapter (stack: {stack: 4}; char_ctc: vocab_size defaults to the chars)
    adapter_kw: dict[str, Any] = field(default_factory=dict)
    lora: LoraSettings | None = None
    #: weight of the auxiliary CTC loss (char_ctc adapter, or a head that trains)
    ctc_weight: float = 0.0
    template: str = DEFAULT_TEMPLATE
    #: "token" (mean over transcript tokens) or "example" (mean of per-example means)
    loss_reduction: str = "token"
    #: dtype the LLM weights are loaded in ("auto": bfloat16 where the CPU/GPU has it natively)
    lm_dtype: str = "float32"
    #: transcript length limit at dev evaluation and inference
    max_new_tokens: int = 128
    #: prefix: audio embeddings in the prompt; xattn: gated cross-attention blocks
    fusion: str = "prefix"
    #: xattn: a cross-attention block after every k-th decoder layer, with this many heads
    xattn_every: int = 4
    xattn_heads: int = 8
    #: xattn: blocks start "random" or from the attention of the LLM layer after them ("lm", Llama-style LLMs)
    xattn_init: str = "random"
    #: xattn: "monotonic" biases each query toward the speech of the token it predicts (ALiBi-like), or "none"
    xattn_alignment: str = "none"
    #: xattn: one block more, on the LLM's final norm, started as a copy of the aligned speech (tied LLMs)
    xattn_copy: bool = False
    #: what the LLM learns to write: the transcript "written" (case, punctuation) or "normalized" as the
    #: token CTC head's targets are (lowercase words, no punctuation): then token k is the head's token k
    transcript_form: str = "written"


@dataclass
class PromptTemplate:
    """Prompt text around the audio; `{prompt_suffix}` receives the optional domain and term lines."""

    text: str = DEFAULT_TEMPLATE
    placeholder: str = AUDIO_PLACEHOLDER

    def __post_init__(self) -> None:
        if self.text.count(self.placeholder) != 1:
            raise ValueError(f"the prompt template needs exactly one '{self.placeholder}': {self.text!r}")

    def render(self, domain: str | None = None, terms: Sequence[str] | None = None) -> tuple[str, str]:
        """(text before the audio, text after it). Plain replace, not str.format: prompts may hold braces."""
        suffix = ""
        if domain and domain.strip():
            suffix += f"\nDomain: {domain.strip()}"
        terms = [t.strip() for t in (terms or []) if t and t.strip()]
        if terms:
            suffix += "\nTerms: " + ", ".join(terms)
        before, after = self.text.replace("{prompt_suffix}", suffix).split(self.placeholder)
        return before, after


@dataclass
class SpeechBatch:
    """One training batch. `features` is whatever the encoder takes, time on axis 1 (B, T, ...).

    `feature_lengths` (B,) are the input lengths in the units of the encoder's `output_lengths`
    (audio samples for the real encoders; all frames valid when None); `texts` are the
    transcripts; `domains` / `terms` give each example's optional domain prompt and term list;
    `ctc_targets` (B, S) padded with `ctc_target_lengths` (B,) feed the CTC loss of a CTC adapter.
    """

    features: torch.Tensor
    feature_lengths: torch.Tensor | None = None
    texts: list[str] | None = None
    domains: list[str | None] | None = None
    terms: list[list[str] | None] | None = None
    ctc_targets: torch.Tensor | None = None
    ctc_target_lengths: torch.Tensor | None = None


@dataclass
class SpeechInputs:
    """What the LLM receives: spliced embeddings, mask, labels (None for generation), audio positions."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    audio_mask: torch.Tensor
    audio: AdapterOutput


@dataclass
class LossOutput:
    """`loss` = lm_loss + ctc_weight * ctc_loss; the parts are kept for logging."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    ctc_loss: torch.Tensor | None = None
    tokens: int = 0


def encoder_output_lengths(
    encoder: nn.Module, in_lengths: torch.Tensor, in_frames: int, out_frames: int
) -> torch.Tensor:
    """Valid output frames per example: the encoder's own `output_lengths(lengths)` when it has one,
    else proportional to the input (ceil(len * out_frames / in_frames)), right for strided encoders
    that do not pad internally. Encoders that pad to a fixed size (Whisper) should define
    `output_lengths`."""
    fn = getattr(encoder, "output_lengths", None)
    if callable(fn):
        out = torch.as_tensor(fn(in_lengths), device=in_lengths.device)
    else:
        out = torch.div(in_lengths * out_frames + in_frames - 1, max(in_frames, 1), rounding_mode="floor")
    return out.long().clamp(0, out_frames)


def pad_sequences(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad tensors (T_i, ...) into (B, T, ...) with zeros; returns (padded, lengths)."""
    lengths = torch.tensor([x.shape[0] for x in items], dtype=torch.long)
    return nn.utils.rnn.pad_sequence(list(items), batch_first=True), lengths


class SpeechLLM(nn.Module):
    """encoder -> adapter -> frozen causal LM (+ LoRA). `forward(batch)` is the training loss.

    `encoder` None: the model takes encoder states (B, T, D) with frame lengths instead of features,
    e.g. states cached once per corpus (llmasr.data.states); training then never runs the encoder.
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        adapter: nn.Module,
        llm: nn.Module,
        tokenizer: object,
        *,
        template: PromptTemplate | None = None,
        lora: LoraSettings | None = None,
        ctc_weight: float = 0.0,
        loss_reduction: str = "token",
        freeze_encoder: bool = True,
        fusion: str = "prefix",
        xattn_every: int = 4,
        xattn_heads: int = 8,
        xattn_init: str = "random",
        xattn_alignment: str = "none",
        xattn_copy: bool = False,
        transcript_form: str = "written",
    ) -> None:
        super().__init__()
        if transcript_form not in TRANSCRIPT_FORMS:
            choices = " or ".join(TRANSCRIPT_FORMS)
            raise ValueError(f"transcript_form must be {choices}, got '{transcript_form}'")
        self.transcript_form = transcript_form
        if loss_reduction not in ("token", "example"):
            raise ValueError(f"loss_reduction must be 'token' or 'example', got '{loss_reduction}'")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got '{fusion}'")
        self.encoder = encoder
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.template = template or PromptTemplate()
        self.ctc_weight = ctc_weight
        self.loss_reduction = loss_reduction
        for p in llm.parameters():
            p.requires_grad_(False)
        if lora is not None:
            llm = with_lora(llm, lora)
        self.llm = llm
        self.lora = lora
        tok = tokenizer
        if tok.eos_token_id is None:
            raise ModelError("the LLM's tokenizer has no EOS token: transcripts could never end")
        self._eos = int(tok.eos_token_id)
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self._start = [int(start)]
        self._pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        core = self.causal_lm
        self._softcap = getattr(core.config, "final_logit_softcapping", None)
        self._prompt_cache: dict[tuple[str | None, tuple[str, ...]], tuple[list[int], list[int]]] = {}
        #: xattn: the speech reaches the LLM through gated cross-attention, not as prompt embeddings
        self.xattn = (
            XAttnFusion(
                core,
                xattn_every,
                xattn_heads,
                init=xattn_init,
                alignment=xattn_alignment,
                copy_block=xattn_copy,
                end_token=self._eos,
            )
            if fusion == "xattn"
            else None
        )
        self.freeze(encoder=freeze_encoder, llm=True)

    @classmethod
    def build(
        cls,
        encoder: nn.Module | None,
        lm: str,
        *,
        adapter: str = "stack",
        adapter_kw: Mapping[str, object] | None = None,
        lora: LoraSettings | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        head: str | None = None,
        states_dim: int | None = None,
        **kw: object,
    ) -> SpeechLLM:
        """Load the LM the project's way (named model or folder) and add an adapter sized to it.

        `head`: folder (or shipped name) of a trained TokenCtcHead, tied to this LLM's embeddings.
        `states_dim`: the state width when there is no encoder (cached states)."""
        from llmasr.components.lm.causal import load_causal_lm
        from llmasr.models.registry import resolve

        kind, folder = resolve(lm, "lm")
        if kind != "causal-lm":
            raise ModelError(f"'{lm}' is a {kind} model, not a causal LM a SpeechLLM can use")
        llm, tokenizer = load_causal_lm(folder, name=lm, device=device, dtype=dtype)
        width = llm.get_input_embeddings().embedding_dim
        kw_adapter = dict(adapter_kw or {})
        if head is not None:
            from llmasr.components.speech.ctc_head import load_head

            kw_adapter["head"] = load_head(head, llm.get_input_embeddings().weight)
        in_dim = int(encoder.dim) if encoder is not None else int(states_dim or 0)
        ad = build_adapter(adapter, in_dim, width, **kw_adapter)
        return cls(encoder, ad, llm, tokenizer, lora=lora, **kw).to(device)

    # ---- structure ---------------------------------------------------------------------------

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers causal LM itself (inside the peft wrapper when LoRA is on)."""
        return base_causal_lm(self.llm)

    def merge_lora(self) -> None:
        """Fold the LoRA weights into the frozen LLM's (peft `merge_adapter`), for inference: the same
        outputs at about half the decoding time on a CPU (measured: 57 -> 30 s for 5 real utterances),
        as each adapted projection becomes one matmul instead of three. Training afterwards would update
        the unmerged copies, so call this only on a model that will not train again."""
        if self.lora is not None and hasattr(self.llm, "merge_adapter"):
            self.llm.merge_adapter()

    @property
    def head(self) -> nn.Module | None:
        """The adapter's token CTC head, when it reads one."""
        return getattr(self.adapter, "head", None)

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_input_embeddings().weight.device

    def freeze(
        self,
        encoder: bool = True,
        llm: bool = True,
        lora: bool = False,
        adapter: bool = False,
        xattn: bool = False,
    ) -> None:
        """Choose what trains (True freezes a part); the adapter's CTC heads stay frozen here (see
        `set_trainable` to train them). The base LLM's own weights always stay frozen unless llm=False."""
        parts = {name for name, frozen in (("encoder", encoder), ("llm", llm), ("lora", lora),
                 ("adapter", adapter), ("xattn", xattn)) if not frozen}  # fmt: skip
        set_trainable(self, parts)

    def train(self, mode: bool = True) -> SpeechLLM:
        """Fully frozen parts stay in eval mode: their dropout would only add noise."""
        super().train(mode)
        for part in (self.encoder, self.llm, self.head):
            if part is not None and not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    def count_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts, shared weights counted once."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter (parameters and buffers), LoRA and anything else unfrozen: the whole checkpoint."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {
            k: v.detach().cpu().clone()
            for k, v in self.state_dict().items()
            if k in names or k.startswith(("adapter.", "xattn."))
        }

    def load_trainable(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load a `trainable_state_dict`; with `strict`, every currently trainable tensor must be in it."""
        result = self.load_state_dict(dict(state), strict=False)
        if result.unexpected_keys:
            raise ModelError(f"checkpoint does not fit this model: unknown {result.unexpected_keys[:5]}")
        if strict:
            wanted = {n for n, p in self.named_parameters() if p.requires_grad}
            missing = sorted(wanted - set(state))
            if missing:
                raise ModelError(f"checkpoint lacks trainable weights: {missing[:5]}")

    # ---- inputs ------------------------------------------------------------------------------

    def encode(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> AdapterOutput:
        """Encoder then adapter; a fully frozen encoder runs without building a graph. `lengths` (B,)
        are the inputs' audio samples: the encoder reads each input over its own length (see
        `SpeechEncoder.forward`) and its real output frames are kept. Without an encoder, `features`
        are encoder states (B, T, D) and `lengths` their frame counts."""
        features = features.to(self.device)
        if self.encoder is None:
            hidden = features
            out_lengths = (
                lengths.to(features.device).long()
                if lengths is not None
                else torch.full((hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=features.device)
            )
        else:
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.encoder.parameters())
            with torch.set_grad_enabled(grad):
                hidden = self.encoder(features, lengths)
            if lengths is None:  # no lengths given: every output frame is real
                out_lengths = torch.full(
                    (hidden.shape[0],), hidden.shape[1], dtype=torch.long, device=hidden.device
                )
            else:  # in the units the encoder's `output_lengths` takes (audio samples for real encoders)
                lengths = lengths.to(features.device).long()
                out_lengths = encoder_output_lengths(
                    self.encoder, lengths, features.shape[1], hidden.shape[1]
                )
        param = next(self.adapter.parameters(), None)
        if param is not None:
            hidden = hidden.to(param.dtype)
        return self.adapter(hidden, out_lengths)

    def prompt_ids(
        self, domain: str | None = None, terms: Sequence[str] | None = None
    ) -> tuple[list[int], list[int]]:
        """Token ids before (with the start token) and after the audio, cached per prompt."""
        key = (domain, tuple(terms or ()))
        if key not in self._prompt_cache:
            before, after = self.template.render(domain, terms)
            self._prompt_cache[key] = (self._start + self._encode(before), self._encode(after))
        return self._prompt_cache[key]

    def target_ids(self, text: str) -> list[int]:
        """The token ids the LLM writes for `text`, then EOS: its `transcript_form` (written as given, or
        normalised as a token CTC head's targets)."""
        if self.transcript_form == "normalized":
            return [*ctc_targets(self.tokenizer, text), self._eos]
        return [*self._encode(text.strip()), self._eos]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def prepare_inputs(
        self,
        audio: AdapterOutput,
        prompts: Sequence[tuple[Sequence[int], Sequence[int]]],
        targets: Sequence[Sequence[int]] | None = None,
        left_pad: bool = False,
    ) -> SpeechInputs:
        """Splice each example's audio embeddings between its prompt parts and pad the batch.

        With cross-attention fusion the prompt holds no audio: the blocks get the speech instead."""
        rows = len(prompts)
        if self.xattn is not None:  # the transcript starts after the prompt (position ids count from 0)
            starts = torch.tensor([len(before) + len(after) for before, after in prompts])
            self.xattn.set_memory(audio.embeds, audio.lengths, starts)
            n_audio = [0] * rows
        else:
            n_audio = [int(n) for n in audio.lengths.tolist()]
        if len(n_audio) != rows or (targets is not None and len(targets) != rows):
            raise ValueError("audio, prompts and targets must have the same batch size")
        seqs = []
        for i, (before, after) in enumerate(prompts):
            tgt = list(targets[i]) if targets is not None else []
            seqs.append(([*before, *[self._pad] * n_audio[i], *after, *tgt], len(before), len(tgt)))
        width = max(len(s) for s, _, _ in seqs)
        ids = torch.full((rows, width), self._pad, dtype=torch.long)
        audio_mask = torch.zeros((rows, width), dtype=torch.bool)
        attention = torch.zeros((rows, width), dtype=torch.long)
        labels = torch.full((rows, width), IGNORE, dtype=torch.long) if targets is not None else None
        for i, (seq, n_before, n_tgt) in enumerate(seqs):
            off = width - len(seq) if left_pad else 0
            ids[i, off : off + len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[i, off : off + len(seq)] = 1
            audio_mask[i, off + n_before : off + n_before + n_audio[i]] = True
            if labels is not None and n_tgt:
                labels[i, off + len(seq) - n_tgt : off + len(seq)] = ids[
                    i, off + len(seq) - n_tgt : off + len(seq)
                ]
        device = self.device
        ids, audio_mask, attention = ids.to(device), audio_mask.to(device), attention.to(device)
        embeds = self.causal_lm.get_input_embeddings()(ids)
        if any(n_audio):
            frames = [audio.embeds[i, : n_audio[i]] for i in range(rows)]
            flat = torch.cat(frames).to(device=device, dtype=embeds.dtype)
            embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), flat)
        return SpeechInputs(
            embeds, attention, labels.to(device) if labels is not None else None, audio_mask, audio
        )

    # ---- training ----------------------------------------------------------------------------

    def forward(self, batch: SpeechBatch | Mapping[str, object]) -> torch.Tensor:
        """Training loss: cross-entropy on transcript tokens (+ ctc_weight x CTC loss)."""
        return self.compute_losses(batch).loss

    def compute_losses(self, batch: SpeechBatch | Mapping[str, object]) -> LossOutput:
        batch = _as_batch(batch)
        if batch.texts is None:
            raise ValueError("a training batch needs `texts` (the transcripts)")
        rows = batch.features.shape[0]
        audio = self.encode(batch.features, batch.feature_lengths)
        prompts = [self.prompt_ids(*_prompt_of(batch.domains, batch.terms, i)) for i in range(rows)]
        inputs = self.prepare_inputs(audio, prompts, [self.target_ids(t) for t in batch.texts])
        lm_loss, tokens = self._lm_loss(inputs)
        loss, ctc_loss = lm_loss, None
        if audio.ctc_logits is not None and batch.ctc_targets is not None:
            ctc_loss = self._ctc_loss(audio, batch.ctc_targets, batch.ctc_target_lengths)
            loss = lm_loss + self.ctc_weight * ctc_loss
        return LossOutput(loss, lm_loss, ctc_loss, tokens)

    def _label_logits(self, inputs: SpeechInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, V) float32, their labels (N,), the mask (B, L-1) that picked them): the LM head
        runs only where a label is, since most positions are prompt or audio."""
        core = self.causal_lm
        hidden = core.base_model(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, use_cache=False
        ).last_hidden_state
        labels = inputs.labels[:, 1:]
        picked = labels != IGNORE  # position j predicts token j + 1
        logits = core.get_output_embeddings()(hidden[:, :-1][picked]).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits, labels[picked], picked

    def _label_nll(self, inputs: SpeechInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(each label's negative log-probability in nats (N,), the (B, L-1) mask that picked them)."""
        logits, targets, picked = self._label_logits(inputs)
        return F.cross_entropy(logits, targets, reduction="none"), picked

    def _lm_loss(self, inputs: SpeechInputs) -> tuple[torch.Tensor, int]:
        ce, picked = self._label_nll(inputs)
        tokens = int(picked.sum())
        if self.loss_reduction == "token":
            return ce.mean(), tokens
        per_row = _row_sums(ce, picked)
        count = picked.sum(1)
        has = count > 0
        return (per_row[has] / count[has]).mean(), tokens

    def _ctc_loss(
        self, audio: AdapterOutput, targets: torch.Tensor, target_lengths: torch.Tensor | None
    ) -> torch.Tensor:
        logp = torch.log_softmax(audio.ctc_logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
        if target_lengths is None:
            target_lengths = torch.full((targets.shape[0],), targets.shape[1], dtype=torch.long)
        return F.ctc_loss(
            logp,
            targets.to(logp.device),
            audio.ctc_lengths.to(logp.device),
            target_lengths.to(logp.device),
            blank=int(getattr(self.adapter, "blank", 0)),
            reduction="mean",
            zero_infinity=True,
        )

    # ---- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        audio_or_features: torch.Tensor | Sequence[torch.Tensor],
        prompt: str | Sequence[str | None] | None = None,
        *,
        terms: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
        lengths: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        **generate_kw: object,
    ) -> list[str]:
        """Transcribe a batch: a padded tensor (B, T, ...) with `lengths`, or a list of (T_i, ...).

        `prompt` is the domain prompt (one for all, or one per example); `terms` a shared term
        list or one list per example. Greedy by default; the LLM's `generate` keeps the KV cache.
        """
        if isinstance(audio_or_features, torch.Tensor):
            features = audio_or_features
        else:
            features, lengths = pad_sequences(audio_or_features)
        rows = features.shape[0]
        domains = [prompt] * rows if prompt is None or isinstance(prompt, str) else list(prompt)
        if terms is not None and (len(terms) == 0 or isinstance(terms[0], str)):
            terms = [list(terms)] * rows  # one shared term list
        was_training = self.training
        self.eval()
        try:
            audio = self.encode(features, lengths)
            prompts = [self.prompt_ids(*_prompt_of(domains, terms, i)) for i in range(rows)]
            inputs = self.prepare_inputs(audio, prompts, None, left_pad=True)
            out = self.causal_lm.generate(
                inputs_embeds=inputs.inputs_embeds,
                attention_mask=inputs.attention_mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                eos_token_id=self._eos,
                pad_token_id=self._pad,
                **self._vocabulary_kw(),
                **generate_kw,
            )
        finally:
            self.train(was_training)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _vocabulary_kw(self) -> dict[str, Any]:
        """`generate` arguments that keep a model writing normalised text (`transcript_form`) to the
        tokens its token CTC head may emit (the head's vocabulary mask) and EOS: without them such a
        model wrote stray non-word tokens after the last word ("six clubsIntfIntf..."). Empty otherwise."""
        allowed = getattr(self.head, "allowed", None)
        if self.transcript_form != "normalized" or allowed is None or bool(allowed.all()):
            return {}
        keep = allowed.clone()  # read each time: the head's mask may change (`allow`)
        keep[self._eos] = True
        return {"suppress_tokens": torch.nonzero(~keep).flatten().tolist()}

    @torch.no_grad()
    def score_texts(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor | None,
        texts: Sequence[str],
        prompt: str | None = None,
    ) -> list[float]:
        """Teacher-forced total log-probability (nats) of each text and the EOS after it, given one
        example (`features` (1, T, ...), `lengths` (1,)) and the domain prompt: any text's score under
        this model, as `generate_nbest` totals its own hypotheses (e.g. another recogniser's text)."""
        if not texts:
            return []
        if features.shape[0] != 1:
            raise ValueError(
                f"score_texts scores texts against one example, got a batch of {features.shape[0]}"
            )
        was_training = self.training
        self.eval()
        try:
            audio = self.encode(features, lengths)
            rows = len(texts)
            audio = AdapterOutput(audio.embeds.expand(rows, -1, -1), audio.lengths.expand(rows))
            prompts = [self.prompt_ids(prompt, None)] * rows
            inputs = self.prepare_inputs(audio, prompts, [self.target_ids(t) for t in texts])
            nll, picked = self._label_nll(inputs)
        finally:
            self.train(was_training)
        return [-float(x) for x in _row_sums(nll, picked)]

    @torch.no_grad()
    def generate_nbest(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor | None,
        n: int,
        prompt: str | None = None,
        *,
        max_new_tokens: int | Sequence[int] = 128,
        no_repeat_ngram_size: int | None = None,
    ) -> list[list[tuple[str, float, list[int]]]]:
        """Beam search (`n` beams, `n` results; greedy for n=1): per example, (text, total log-probability
        in nats of its tokens and EOS, token ids), best first. The LLM's `generate` keeps the KV cache.

        The beam ranks by total log-probability (transformers' `length_penalty` 0, the ranking returned
        here; its default divides by length, which lets a loop of likely tokens outlive the finished
        hypotheses) and repeats no `NO_REPEAT_NGRAM`-token sequence (its `no_repeat_ngram_size`):
        a loop guard. On a read 8 s clip with 0.2 s of edge silence the shipped D3's 4 beams all read
        "had then, then, then, ..." to the token limit (53 s); with both, the finished sentence (7.5 s).

        `max_new_tokens`: one limit, or one per example (B,). Greedy: the batch generates to the largest
        and each example is cut to its own; beam search: the examples of each limit decode as a batch of
        their own. Either way an example reads the same batched as alone.

        `no_repeat_ngram_size`: the n-gram ban (None: `NO_REPEAT_NGRAM` for beams, none for greedy;
        0: none)."""
        rows = features.shape[0]
        limits = [max_new_tokens] * rows if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != rows:
            raise ValueError(f"max_new_tokens: {len(limits)} limits for {rows} examples")
        if n > 1 and len(set(limits)) > 1:
            # a beam cut after the fact is not the beam search of the shorter limit (beams that would
            # have ended live on, cut to the same prefix): each limit decodes as its own batch
            grouped: list[list[tuple[str, float, list[int]]]] = [[] for _ in range(rows)]
            for limit in sorted(set(limits)):
                rows_of = [i for i, lim in enumerate(limits) if lim == limit]
                part = self.generate_nbest(
                    features[rows_of],
                    lengths[rows_of] if lengths is not None else None,
                    n,
                    prompt,
                    max_new_tokens=limit,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                )
                for i, hyps in zip(rows_of, part):
                    grouped[i] = hyps
            return grouped
        ngram = no_repeat_ngram_size
        if ngram is None:
            ngram = NO_REPEAT_NGRAM if n > 1 else 0
        guard = {"length_penalty": 0.0} if n > 1 else {}
        if ngram:
            guard["no_repeat_ngram_size"] = ngram
        was_training = self.training
        self.eval()
        try:
            audio = self.encode(features, lengths)
            prompts = [self.prompt_ids(prompt, None)] * rows
            inputs = self.prepare_inputs(audio, prompts, None, left_pad=True)
            with warnings.catch_warnings():
                # the guard is meant for the generated tokens only (the prompt is embeddings)
                warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds")
                out = self.causal_lm.generate(
                    inputs_embeds=inputs.inputs_embeds,
                    attention_mask=inputs.attention_mask,
                    max_new_tokens=max(limits),
                    num_beams=n,
                    num_return_sequences=n,
                    do_sample=False,
                    eos_token_id=self._eos,
                    pad_token_id=self._pad,
                    output_scores=True,
                    return_dict_in_generate=True,
                    **self._vocabulary_kw(),
                    **guard,
                )
            step_logp = self.causal_lm.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=n == 1
            )
        finally:
            self.train(was_training)
        results: list[list[tuple[str, float, list[int]]]] = []
        for row in range(rows):
            hyps = []
            for k in range(n):
                seq = out.sequences[row * n + k].tolist()[: limits[row]]
                logp = step_logp[row * n + k][: limits[row]]
                keep = [i for i, t in enumerate(seq) if t != self._pad or i == 0]
                ids = [t for t in seq if t not in (self._pad, self._eos)]
                total = float(logp[[i for i in keep if i < len(logp)]].float().clamp(min=-1e4).sum())
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                hyps.append((text, total, ids))
            results.append(sorted(hyps, key=lambda h: -h[1]))
        return results


def _row_sums(values: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """(B,) sums of per-label `values` (N,) by the row of `picked` (B, L) each came from."""
    return values.new_zeros(picked.shape[0]).index_add(0, picked.nonzero()[:, 0], values)


def _as_batch(batch: SpeechBatch | Mapping[str, object]) -> SpeechBatch:
    """A collate function may return a dict; keys that SpeechBatch does not know are ignored."""
    if isinstance(batch, SpeechBatch):
        return batch
    known = {f.name for f in fields(SpeechBatch)}
    return SpeechBatch(**{k: v for k, v in batch.items() if k in known})


def _prompt_of(
    domains: Sequence[str | None] | None, terms: Sequence[Sequence[str] | None] | None, i: int
) -> tuple[str | None, Sequence[str] | None]:
    return (domains[i] if domains is not None else None), (terms[i] if terms is not None else None)


# --------------------------------------------------------------------------- building and parts

#: the parts of a SpeechLLM a training stage can train
PARTS = ("adapter", "head", "ctc_head", "xattn", "lora", "encoder")


def build_speechllm(
    config: SpeechLlmConfig,
    device: str = "cpu",
    *,
    encoder: nn.Module | None = None,
    with_encoder: bool = True,
    states_dim: int | None = None,
) -> SpeechLLM:
    """The SpeechLLM a config describes, everything frozen (training unfreezes per stage).

    `encoder` replaces loading `config.encoder` by name (tests, or one already in memory);
    `with_encoder=False` builds the states-input model (training on cached states of `states_dim`).
    """
    from llmasr.components.speech.adapters import BLANK, CHAR_VOCAB
    from llmasr.components.speech.encoders import load_encoder

    enc = encoder
    if enc is None and with_encoder:
        enc = load_encoder(config.encoder, trim_tail=config.trim_tail)
    if enc is None and states_dim is None:
        states_dim = _encoder_dim(config.encoder)
    adapter_kw = dict(config.adapter_kw)
    if config.adapter == "char_ctc":
        adapter_kw.setdefault("vocab_size", len(CHAR_VOCAB))
        adapter_kw.setdefault("blank", BLANK)
    model = SpeechLLM.build(
        enc,
        config.lm,
        adapter=config.adapter,
        adapter_kw=adapter_kw,
        lora=config.lora,
        device=device,
        dtype=config.lm_dtype,
        head=config.head,
        states_dim=states_dim,
        template=PromptTemplate(config.template),
        ctc_weight=config.ctc_weight,
        loss_reduction=config.loss_reduction,
        fusion=config.fusion,
        xattn_every=config.xattn_every,
        xattn_heads=config.xattn_heads,
        xattn_init=config.xattn_init,
        xattn_alignment=config.xattn_alignment,
        xattn_copy=config.xattn_copy,
        transcript_form=config.transcript_form,
    )
    set_trainable(model, ())
    return model


def _encoder_dim(name: str) -> int:
    """State width of a named/folder Whisper encoder, read from its CTranslate2 header (no weights)."""
    from llmasr.components.speech.encoders import read_ct2_header
    from llmasr.models.registry import resolve

    kind, location = resolve(name, "asr")
    if kind != "whisper":
        raise ModelError(f"'{name}': give the states' width for a {kind} encoder")
    return int(read_ct2_header(location).variables["encoder/conv1/weight"].shape[0])


def part_of(name: str) -> str:
    """Which part a parameter or state key belongs to: adapter, head (a token CTC head), ctc_head (a
    char compressor's head), xattn, lora, encoder or llm."""
    if name.startswith("encoder."):
        return "encoder"
    if name.startswith("xattn."):
        return "xattn"
    if name.startswith("adapter.head."):
        return "head"
    if name.startswith("adapter.ctc_head."):
        return "ctc_head"
    if name.startswith("adapter."):
        return "adapter"
    if "lora_" in name:
        return "lora"
    return "llm"


def set_trainable(model: SpeechLLM, parts: Iterable[str]) -> None:
    """Unfreeze exactly `parts` (see PARTS), freeze everything else."""
    parts = set(parts)
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in parts)


def checkpoint_state(model: SpeechLLM, parts: Iterable[str]) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the whole adapter (with its CTC head) and cross-attention blocks (new
    weights and buffers), and whatever else a stage trains (LoRA, the encoder). The frozen encoder and
    LLM are reloaded by name from the config."""
    parts = set(parts)
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(("adapter.", "xattn.")) or part_of(k) in parts
    }
