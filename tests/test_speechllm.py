"""SpeechLLM on a tiny random Llama and a stand-in encoder: splicing, masks, training, save/load, generate."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from llmasr.components.speech.adapters import CharCtcCompressor, ConvAdapter, StackAdapter
from llmasr.components.speech.speechllm import (
    IGNORE,
    LoraSettings,
    PromptTemplate,
    SpeechBatch,
    SpeechLLM,
    encoder_output_lengths,
)
from llmasr.core.errors import ModelError
from llmasr.core.text import NO_REPEAT_NGRAM
from tests.tiny import save_tiny_lm

torch.set_num_threads(1)

HAS_PEFT = importlib.util.find_spec("peft") is not None
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # from peft
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install 'peft>=0.13')")

WORDS = (
    "the a cat dog sat on mat ran to park in house big small red blue hello world meeting budget "
    "kubernetes deploy cluster transcribe speech domain terms . , :"
).split()
MELS = 8


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), WORDS, unused_ids=2, lowercase=True)


class TinyEncoder(nn.Module):
    """Stand-in for a speech encoder: (B, T, MELS) -> (B, T // 2, dim), no mixing across windows."""

    def __init__(self, dim: int = 16, with_lengths: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.frames_per_second = 50
        self.conv = nn.Conv1d(MELS, dim, kernel_size=2, stride=2)
        if not with_lengths:
            self.output_lengths = None  # exercise the proportional fallback

    def forward(self, features: torch.Tensor, num_samples: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.conv(features.transpose(1, 2)).transpose(1, 2))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, 2, rounding_mode="floor")


def _model(
    folder: Path, adapter: str = "stack", lora: bool = False, seed: int = 0, **kw: object
) -> SpeechLLM:
    torch.manual_seed(0)
    encoder = TinyEncoder()  # the frozen encoder is the same in every model; what trains depends on seed
    torch.manual_seed(seed)
    adapter_kw = {"stack": {"stack": 2}, "conv": {"stride": 2}, "char_ctc": {"vocab_size": 6}}[adapter]
    return SpeechLLM.build(
        encoder,
        str(folder),
        adapter=adapter,
        adapter_kw=adapter_kw,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
        **kw,
    )


def _batch(lengths: list[int], texts: list[str], seed: int = 0) -> SpeechBatch:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), max(lengths), MELS, generator=g)
    for i, n in enumerate(lengths):
        feats[i, n:] = 7.0  # padding garbage that must not matter
    return SpeechBatch(feats, torch.tensor(lengths), texts)


TEXTS = ["the cat sat on the mat", "hello world", "deploy the kubernetes cluster"]


def test_template_rendering() -> None:
    t = PromptTemplate()
    assert t.render() == ("", "\nTranscribe the speech.\n")
    before, after = t.render("a budget meeting", ["Kubernetes", " ", "EBITDA"])
    assert (
        before == ""
        and after == "\nTranscribe the speech.\nDomain: a budget meeting\nTerms: Kubernetes, EBITDA\n"
    )
    custom = PromptTemplate("Audio {x}: <audio> then{prompt_suffix}.")
    assert custom.render(terms=["a"]) == ("Audio {x}: ", " then\nTerms: a.")
    with pytest.raises(ValueError):
        PromptTemplate("no placeholder")


def test_encoder_lengths_helper() -> None:
    enc = TinyEncoder()
    assert encoder_output_lengths(enc, torch.tensor([10, 7]), 10, 5).tolist() == [5, 3]
    plain = TinyEncoder(with_lengths=False)
    assert encoder_output_lengths(plain, torch.tensor([10, 7, 0]), 10, 5).tolist() == [5, 4, 0]


def test_build_freezes_llm_and_encoder(llama_dir: Path) -> None:
    model = _model(llama_dir)
    trainable, total = model.count_parameters()
    adapter_params = sum(p.numel() for p in model.adapter.parameters())
    assert trainable == adapter_params and total > trainable
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model.freeze(encoder=False)
    assert model.count_parameters()[0] == adapter_params + sum(p.numel() for p in model.encoder.parameters())
    with pytest.raises(ModelError):
        SpeechLLM.build(TinyEncoder(), str(llama_dir / "missing"))


def test_splicing_and_labels(llama_dir: Path) -> None:
    model = _model(llama_dir).eval()
    batch = _batch([12, 6], TEXTS[:2])
    audio = model.encode(batch.features, batch.feature_lengths)
    assert audio.lengths.tolist() == [3, 2]  # 12 -> 6 encoder frames -> 3 stacked; 6 -> 3 -> 2
    prompts = [model.prompt_ids(), model.prompt_ids("a budget meeting", ["kubernetes"])]
    targets = [model.target_ids(t) for t in TEXTS[:2]]
    inp = model.prepare_inputs(audio, prompts, targets)
    embed = model.causal_lm.get_input_embeddings()
    for i in range(2):
        before, after = prompts[i]
        n = int(audio.lengths[i])
        assert before[0] == 1  # BOS first
        seq_len = len(before) + n + len(after) + len(targets[i])
        pos = torch.arange(len(before), len(before) + n)
        assert inp.audio_mask[i].nonzero().flatten().tolist() == pos.tolist()
        torch.testing.assert_close(inp.inputs_embeds[i, pos], audio.embeds[i, :n])
        text_ids = torch.tensor([*before, *after, *targets[i]])
        text_pos = [j for j in range(seq_len) if not inp.audio_mask[i, j]]
        torch.testing.assert_close(inp.inputs_embeds[i, text_pos], embed(text_ids))
        assert inp.attention_mask[i].tolist() == [1] * seq_len + [0] * (inp.attention_mask.shape[1] - seq_len)
        labelled = inp.labels[i] != IGNORE
        assert labelled.nonzero().flatten().tolist() == list(range(seq_len - len(targets[i]), seq_len))
        assert inp.labels[i, labelled].tolist() == targets[i] and targets[i][-1] == 2  # transcript + EOS
    # the domain prompt sits after the audio
    assert len(prompts[1][1]) > len(prompts[0][1])
    # generation layout: left padding, same content at the right end
    gen = model.prepare_inputs(audio, prompts, None, left_pad=True)
    assert gen.labels is None
    width = gen.attention_mask.shape[1]
    short = len(prompts[0][0]) + 3 + len(prompts[0][1])
    assert gen.attention_mask[0].tolist() == [0] * (width - short) + [1] * short


@pytest.mark.parametrize("adapter", ["stack", "conv", "char_ctc"])
def test_padding_does_not_change_other_losses(llama_dir: Path, adapter: str) -> None:
    model = _model(llama_dir, adapter=adapter, loss_reduction="example").eval()
    assert isinstance(
        model.adapter, {"stack": StackAdapter, "conv": ConvAdapter, "char_ctc": CharCtcCompressor}[adapter]
    )
    lengths = [14, 6, 9]
    batch = _batch(lengths, TEXTS)
    with torch.no_grad():
        together = model(batch)
        alone = [
            model(SpeechBatch(batch.features[i : i + 1, :n], torch.tensor([n]), [TEXTS[i]]))
            for i, n in enumerate(lengths)
        ]
        torch.testing.assert_close(together, torch.stack(alone).mean(), rtol=1e-5, atol=1e-5)
        # token-mean reduction: the same, weighted by transcript length
        model.loss_reduction = "token"
        tokens = torch.tensor([len(model.target_ids(t)) for t in TEXTS], dtype=torch.float)
        weighted = (torch.stack(alone) * tokens).sum() / tokens.sum()
        torch.testing.assert_close(model(batch), weighted, rtol=1e-5, atol=1e-5)


def test_ctc_loss_is_added(llama_dir: Path) -> None:
    model = _model(llama_dir, adapter="char_ctc", ctc_weight=0.5).eval()
    batch = _batch([12, 8], TEXTS[:2])
    batch.ctc_targets = torch.tensor([[1, 2, 3], [4, 5, 0]])
    batch.ctc_target_lengths = torch.tensor([3, 2])
    with torch.no_grad():
        out = model.compute_losses(batch)
    assert out.ctc_loss is not None and out.ctc_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.ctc_loss)
    as_dict = {**vars(batch), "ids": ["u1", "u2"]}  # a collate's dict works; unknown keys are ignored
    with torch.no_grad():
        torch.testing.assert_close(model(as_dict), out.loss)


def _base_weights(model: SpeechLLM) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}


def _train(model: SpeechLLM, batch: SpeechBatch, steps: int = 30) -> tuple[float, float]:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = last = 0.0
    for step in range(steps):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
    model.eval()
    return first, last


@pytest.mark.parametrize("lora", [pytest.param(True, marks=needs_peft), False], ids=["lora", "adapter-only"])
def test_training_lowers_loss_and_keeps_llm(llama_dir: Path, lora: bool) -> None:
    model = _model(llama_dir, lora=lora)
    if lora:
        assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    base = _base_weights(model)
    encoder = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    batch = _batch([12, 8], TEXTS[:2])
    first, last = _train(model, batch)
    # a frozen random LLM can be steered only so far through a few audio embeddings; LoRA goes further
    assert last < (0.5 if lora else 0.85) * first, (first, last)
    for n, p in model.llm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n
    for n, p in model.encoder.named_parameters():
        assert torch.equal(p, encoder[n]), n


@pytest.mark.parametrize("lora", [pytest.param(True, marks=needs_peft), False], ids=["lora", "adapter-only"])
def test_trainable_state_round_trip(llama_dir: Path, lora: bool, tmp_path: Path) -> None:
    model = _model(llama_dir, lora=lora)
    batch = _batch([10, 6], TEXTS[:2])
    _train(model, batch, steps=3)
    state = model.trainable_state_dict()
    assert all(k.startswith("adapter.") or "lora_" in k for k in state)
    assert any("lora_" in k for k in state) == lora
    torch.save(state, tmp_path / "trainable.pt")
    fresh = _model(llama_dir, lora=lora, seed=1)  # other adapter/LoRA init, same frozen weights
    with torch.no_grad():
        assert not torch.equal(fresh(batch), model(batch))
        fresh.load_trainable(torch.load(tmp_path / "trainable.pt"))
        assert torch.equal(fresh(batch), model(batch))
    assert fresh.generate(batch.features, lengths=batch.feature_lengths, max_new_tokens=4) == model.generate(
        batch.features, lengths=batch.feature_lengths, max_new_tokens=4
    )
    with pytest.raises(ModelError):
        fresh.load_trainable({"adapter.nope": torch.zeros(1)})
    with pytest.raises(ModelError):
        fresh.load_trainable({})


def test_generate_batched_equals_alone(llama_dir: Path) -> None:
    model = _model(llama_dir)
    _train(model, _batch([12, 8], TEXTS[:2]), steps=20)  # give the outputs some structure
    feats = [torch.randn(n, MELS, generator=torch.Generator().manual_seed(n)) for n in (12, 5, 9)]
    together = model.generate(feats, max_new_tokens=6)
    assert len(together) == 3 and all(isinstance(t, str) for t in together)
    assert any(together)
    for i, f in enumerate(feats):
        assert model.generate([f], max_new_tokens=6) == [together[i]]
    # per-example prompts and terms, beams
    prompted = model.generate(
        feats[:2], prompt=["a budget meeting", None], terms=["kubernetes"], max_new_tokens=4
    )
    assert len(prompted) == 2
    beams = model.generate(feats, max_new_tokens=4, num_beams=2)
    assert len(beams) == 3 and all(isinstance(t, str) for t in beams)


def test_generate_nbest_cuts_each_example_to_its_own_limit(llama_dir: Path) -> None:
    """Per-example token limits: a batch generates to the largest and cuts each example to its own,
    so each reads (text, ids, score) as it does alone with that limit."""
    model = _model(llama_dir)
    _train(model, _batch([12, 8], TEXTS[:2]), steps=20)
    feats = [torch.randn(n, MELS, generator=torch.Generator().manual_seed(n)) for n in (12, 5, 9)]
    padded = nn.utils.rnn.pad_sequence(feats, batch_first=True)
    lengths = torch.tensor([len(f) for f in feats])
    limits = [2, 6, 4]
    together = model.generate_nbest(padded, lengths, 1, max_new_tokens=limits)
    for i, f in enumerate(feats):
        [alone] = model.generate_nbest(f[None], lengths[i : i + 1], 1, max_new_tokens=limits[i])
        assert [(t, ids) for t, _, ids in together[i]] == [(t, ids) for t, _, ids in alone]
        assert together[i][0][1] == pytest.approx(alone[0][1], abs=1e-4)
        assert len(together[i][0][2]) <= limits[i]
    assert len(together[0][0][2]) == 2  # the shortest limit binds: without the cut it would read on
    beams = model.generate_nbest(padded, lengths, 3, max_new_tokens=limits)  # beam search, too
    for i, f in enumerate(feats):
        alone = model.generate_nbest(f[None], lengths[i : i + 1], 3, max_new_tokens=limits[i])[0]
        assert [(t, ids) for t, _, ids in beams[i]] == [(t, ids) for t, _, ids in alone]
        assert len({tuple(ids) for _, _, ids in beams[i]}) == 3  # distinct hypotheses
    generated = []  # the loop guard: no beam repeats a 4-token sequence (raw tokens, up to EOS)
    generate = model.causal_lm.generate

    def spy(**kw):  # noqa: ANN003, ANN202
        out = generate(**kw)
        generated.extend(out.sequences.tolist())
        return out

    model.causal_lm.generate = spy
    with warnings.catch_warnings(record=True) as caught:  # transformers' note on the guard is not shown
        warnings.simplefilter("always")
        model.generate_nbest(padded, lengths, 3, max_new_tokens=40)
    assert not [w for w in caught if "no_repeat_ngram_size" in str(w.message)]
    n = NO_REPEAT_NGRAM
    for seq in generated:
        seq = seq[: seq.index(model._eos)] if model._eos in seq else seq
        grams = [tuple(seq[j : j + n]) for j in range(len(seq) - n + 1)]
        assert len(grams) == len(set(grams)), seq
    assert max(len(s) for s in generated) > 2 * n  # long enough for a loop to show
    with pytest.raises(ValueError, match="2 limits for 3 examples"):
        model.generate_nbest(padded, lengths, 1, max_new_tokens=[2, 3])


def test_generate_keeps_training_mode(llama_dir: Path) -> None:
    model = _model(llama_dir).train()
    model.generate([torch.randn(6, MELS)], max_new_tokens=2)
    assert model.training and model.adapter.training
    assert not model.encoder.training and not model.llm.training  # frozen parts stay in eval


def test_adding_lora_raises_no_library_deprecation_warning(llama_dir: Path) -> None:
    """peft's use of transformers' deprecated `is_gradient_checkpointing` is not shown to users (every
    speech-LLM load printed it)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _model(llama_dir, lora=True)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_normalized_transcripts_are_the_heads_ctc_targets(llama_dir: Path) -> None:
    """transcript_form="normalized": the LLM learns to write what a token CTC head emits (lowercase words,
    no punctuation), so its token k is the head's token k; "written" keeps the punctuation."""
    from llmasr.components.speech.ctc_head import ctc_targets

    text = "hello, the cat: sat."
    written = _model(llama_dir)
    normalized = _model(llama_dir, transcript_form="normalized")
    eos = written.tokenizer.eos_token_id
    want = ctc_targets(normalized.tokenizer, text)
    assert normalized.target_ids(text) == [*want, eos]
    assert len(want) == 4 and len(written.target_ids(text)) == len(want) + 3 + 1  # , : . and EOS
    with pytest.raises(ValueError, match="transcript_form"):
        _model(llama_dir, transcript_form="lower")


def test_normalized_model_writes_only_its_heads_tokens(
    llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model writing normalised text keeps to the tokens its token CTC head may emit (the head's
    vocabulary mask) and EOS, greedy and in beams; a model writing written text is not restricted."""
    model = _model(llama_dir, transcript_form="normalized")
    tok = model.tokenizer
    words = {"the", "cat", "sat"}
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[tok.convert_tokens_to_ids(sorted(words))] = True
    feats = [torch.randn(n, 8, generator=torch.Generator().manual_seed(n)) for n in (12, 5)]
    free = model.generate(feats, max_new_tokens=6, min_new_tokens=6)
    assert any(set(t.split()) - words for t in free), free  # unrestricted, it writes other words
    # generation reads only the head's `allowed` mask (TokenCtcHead.allowed)
    head = nn.Module()
    head.register_buffer("allowed", allowed)
    monkeypatch.setattr(SpeechLLM, "head", property(lambda self: head))
    for text in model.generate(feats, max_new_tokens=6, min_new_tokens=6):
        assert text and set(text.split()) <= words, text
    for hyps in model.generate_nbest(torch.stack([feats[0], feats[0]]), None, 2, max_new_tokens=4):
        assert all(set(text.split()) <= words for text, _, _ in hyps) and any(t for t, _, _ in hyps), hyps
    assert _model(llama_dir)._vocabulary_kw() == {}  # written text: not restricted


def test_greedy_decoder_loop_is_decoded_again_with_the_ngram_ban() -> None:
    """The recogniser's loop guard: a greedy output that ran to the token limit its audio sets, or repeats
    itself past the words its audio can hold, is decoded again with repeated NO_REPEAT_NGRAM-grams
    banned (only those segments); an output that ended by itself (even a repetitive one the audio can hold)
    or reached `max_new_tokens` on a long segment is kept; beams are not decoded twice."""
    from types import SimpleNamespace

    from llmasr.components.asr.speechllm import TOKENS_PER_WORD, SpeechLlmRecognizer
    from llmasr.core.text import max_spoken_words

    calls: list[dict] = []
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()

    class Fake:
        encoder = SimpleNamespace(features=lambda pieces: torch.zeros(len(pieces), 4, MELS))

        def eval(self) -> Fake:
            return self

        def generate_nbest(self, features, lengths, n, prompt, *, max_new_tokens, no_repeat_ngram_size=None):  # noqa: ANN001, ANN202
            calls.append({"rows": len(features), "limits": list(max_new_tokens), "ban": no_repeat_ngram_size})
            if no_repeat_ngram_size:
                return [[(f"again {i}", -3.0, [1, 2])] for i in range(len(features))]
            a, b, c, d = max_new_tokens
            return [
                [("one seventeen " + "one " * 20, -9.0, list(range(22)))],  # repeats past what 2 s holds
                [(" ".join(words[: b // 2]), -8.0, list(range(b)))],  # varied, but ran to its audio's limit
                [("no no no no", -2.0, [5, 5, 5, 5])],  # repeats, but ended well inside its limit
                [(" ".join(words * 4)[:200], -9.0, list(range(d)))],  # a long segment: max_new_tokens binds
            ]

    rec = SpeechLlmRecognizer(Fake(), name="fake", accepts_prompt=False, max_new_tokens=64)
    seconds = [2.0, 1.5, 3.0, 20.0]
    audio = [np.zeros(int(16000 * s), np.float32) for s in seconds]
    lists = rec.nbest(audio, 1)
    limits = [min(64, int(TOKENS_PER_WORD * max_spoken_words(s)) + 1) for s in seconds]
    assert limits[3] == 64 and limits[1] < 64
    assert calls == [
        {"rows": 4, "limits": limits, "ban": None},
        {"rows": 2, "limits": limits[:2], "ban": NO_REPEAT_NGRAM},
    ]
    assert [[h.text for h in hyps] for hyps in lists[:2]] == [["again 0"], ["again 1"]]
    assert [h.text for h in lists[2]] == ["no no no no"]
    assert lists[3][0].text.startswith("alpha bravo")
    calls.clear()
    rec.nbest(audio, 2)  # beams ban repeated n-grams already: one decoding
    assert [c["ban"] for c in calls] == [None]


def test_word_times_leave_speech_the_model_dropped_as_a_gap() -> None:
    """`match_times`: matched words take the head's times; a word the head spelled otherwise takes the
    head words opposite it; a word opposite no head word shares its neighbours' gap; an unmatched word
    never lasts more than MAX_WORD_SECONDS (a dropped sentence is not stretched into the word before)."""
    from llmasr.components.asr.speechllm import MAX_WORD_SECONDS, match_times

    spoken = [("for", 5.0, 5.3), ("them", 5.3, 5.6)]
    spoken += [(f"w{k}", 6.0 + k, 6.8 + k) for k in range(15)]  # a sentence the model left out
    spoken += [("he", 22.4, 22.6), ("might", 22.6, 23.0)]
    words = match_times(["for", "thum,", "he", "might"], spoken, 30.0)
    assert [(w.word, w.start, w.end) for w in words[2:]] == [("he", 22.4, 22.6), ("might", 22.6, 23.0)]
    assert words[0].end == 5.3 and words[1].start == 5.3
    assert words[1].end - words[1].start <= MAX_WORD_SECONDS
    # spelled otherwise, one for one: the head's own times
    words = match_times(["four", "them"], [("for", 1.0, 1.2), ("them", 1.3, 1.5)], 3.0)
    assert [(w.start, w.end) for w in words] == [(1.0, 1.2), (1.3, 1.5)]
    # opposite no head word: the gap between the neighbours, each word within the cap
    words = match_times(["a", "b", "c"], [("a", 0.0, 0.5), ("c", 1.5, 2.0)], 3.0)
    assert (words[1].start, words[1].end) == (0.5, 1.5)
    words = match_times(["x"], [], 10.0)
    assert (words[0].start, words[0].end) == (0.0, MAX_WORD_SECONDS)
    # two words against a dropped sentence: each takes the head word it most resembles
    words = match_times(["for", "thum,", "hee", "might"], spoken, 30.0)
    assert [(w.start, w.end) for w in words[1:3]] == [(5.3, 5.6), (22.4, 22.6)]
    # a run opposite no head word: word after word from its left neighbour, each at most the cap
    words = match_times(["a", "x", "y", "z", "b"], [("a", 0.0, 0.3), ("b", 15.0, 15.3)], 20.0)
    assert [(w.start, w.end) for w in words[1:4]] == [(0.3, 1.8), (1.8, 3.3), (3.3, 4.8)]
    # ... and back from its right neighbour when it opens the segment
    words = match_times(["x", "y", "a"], [("a", 9.0, 9.4)], 10.0)
    assert [(w.start, w.end) for w in words[:2]] == [(6.0, 7.5), (7.5, 9.0)]


def test_a_speechllm_reads_segments_no_longer_than_it_was_trained_on() -> None:
    from types import SimpleNamespace

    from llmasr.components.asr.speechllm import SpeechLlmRecognizer

    model = SimpleNamespace(eval=lambda: model)
    assert SpeechLlmRecognizer(model, name="m", accepts_prompt=False, window=20.0).window == 20.0
    assert SpeechLlmRecognizer(model, name="m", accepts_prompt=False, window=45.0).window == 30.0
    assert SpeechLlmRecognizer(model, name="m", accepts_prompt=False).window == 30.0
    with pytest.raises(ModelError, match="max_duration"):
        SpeechLlmRecognizer(model, name="m", accepts_prompt=False, window=0.0)
