"""The token CTC head (align before you fuse): targets from the LLM's tokenizer, compression lengths, a tiny
head trained on made-up states learning to emit the right tokens, and cached-state training giving the same
loss as training on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmasr.components.speech.ctc_head import CtcHeadConfig, TokenCtcHead, ctc_targets
from tests.tiny import save_tiny_lm, save_tiny_whisper

torch.set_num_threads(1)

WORDS = "the a cat dog sat on mat ran to park in house big small red blue hello world".split()
#: a token id of the tiny LM's vocabulary that no transcript of WORDS uses (the unknown token)
WORDS_ID_EXTRA = 0


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("lm") / "llm"
    save_tiny_lm(folder, WORDS, lowercase=True)
    model = AutoModelForCausalLM.from_pretrained(folder)
    return model.get_input_embeddings().weight.detach().clone(), AutoTokenizer.from_pretrained(folder)


def head_for(embeddings: torch.Tensor, **kw: object) -> TokenCtcHead:
    config = CtcHeadConfig(input_dim=8, stack=2, dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0, **kw)
    torch.manual_seed(0)
    return TokenCtcHead(config, embeddings)


def test_targets_are_the_llm_tokenizers_ids_of_normalised_text(lm) -> None:
    _, tokenizer = lm
    ids = ctc_targets(tokenizer, "The CAT sat, on 2 mats!")  # lowercase, no punctuation, numbers spelled
    assert ids == tokenizer.encode("the cat sat on two mats", add_special_tokens=False)
    assert ctc_targets(tokenizer, "?!") == []


def test_logits_shapes_blank_and_vocabulary_mask(lm) -> None:
    embeddings, _ = lm
    head = head_for(embeddings)
    v = embeddings.shape[0]
    logits, lengths = head(torch.randn(3, 11, 8), torch.tensor([11, 7, 2]))
    assert logits.shape == (3, 6, v + 1) and lengths.tolist() == [6, 4, 1]  # ceil(T / stack)
    head.allow([3, 5])
    logits, _ = head(torch.randn(1, 4, 8), torch.tensor([4]))
    emitted = {tok for tok, _, _ in head.greedy(logits, torch.tensor([2]))[0]}
    assert emitted <= {3, 5} and torch.isinf(logits[0, :, 4]).all()
    assert not torch.isinf(logits[0, :, v]).any()  # blank is always allowed


def test_sequence_logp_sums_every_alignment(lm) -> None:
    """CTC's forward algorithm, checked against enumerating every frame labelling by hand; a sequence
    that needs more frames than there are (a repeated token needs a blank between) gets -inf."""
    import itertools
    import math

    embeddings, _ = lm
    head = head_for(embeddings)
    v = embeddings.shape[0]
    torch.manual_seed(3)
    logits = torch.randn(1, 4, v + 1)
    logp = torch.log_softmax(logits, -1)[0]

    def collapse(path: tuple[int, ...]) -> list[int]:
        out, prev = [], None
        for label in path:
            if label != v and label != prev:
                out.append(label)
            prev = label
        return out

    for target in ([3], [3, 5], [5, 5], []):
        labels = sorted({*target, v})
        total = [
            float(sum(logp[t, x] for t, x in enumerate(path)))
            for path in itertools.product(labels, repeat=4)
            if collapse(path) == target
        ]
        expected = math.log(sum(math.exp(x) for x in total))
        got = head.sequence_logp(logits, torch.tensor([4]), [target])
        assert float(got[0]) == pytest.approx(expected, abs=1e-4), target
    too_long = head.sequence_logp(logits, torch.tensor([4]), [[3, 3, 3]])  # needs 5 frames
    assert float(too_long[0]) == float("-inf")


def test_prefix_beam_search_matches_the_forward_algorithm(lm) -> None:
    """With a beam and top-k wide enough to keep every prefix (and no frame skipped as blank), the
    search's scores are the exact CTC sequence log-likelihoods, its best sequence is the most likely of
    all, and a narrow beam keeps the best one, in order; the shortest row stops at its length. A frame
    that is nearly all blank extends by blank only, and a top-k below the vocabulary still extends each
    prefix by its own last token (a repeat)."""
    embeddings, _ = lm
    head = head_for(embeddings)
    v = 4  # a small vocabulary: only the first 4 tokens get probability
    torch.manual_seed(5)
    logits = torch.full((2, 5, embeddings.shape[0] + 1), -1e4)
    logits[:, :, :v] = torch.randn(2, 5, v) * 2
    logits[:, :, -1] = torch.randn(2, 5) * 2  # blank
    lengths = torch.tensor([5, 3])
    full = head.beam_search(logits, lengths, beam=10_000, top_k=v, blank_skip=1.0)
    for row in range(2):
        seqs = [seq for seq, _ in full[row]]
        exact = head.sequence_logp(logits[row : row + 1].expand(len(seqs), -1, -1),
                                   lengths[row : row + 1].expand(len(seqs)), seqs)  # fmt: skip
        for (seq, score), want in zip(full[row], exact.tolist(), strict=True):
            assert score == pytest.approx(want, abs=1e-4), seq
        assert all(len(seq) <= int(lengths[row]) for seq in seqs)
        assert full[row][0][1] == pytest.approx(max(exact.tolist()), abs=1e-6)
        narrow = head.beam_search(logits[row : row + 1], lengths[row : row + 1], beam=3, top_k=v)[0]
        assert len(narrow) == 3 and narrow[0][0] == seqs[0]
        scores = [score for _, score in narrow]
        assert scores == sorted(scores, reverse=True)
    # frame 1 is all blank: no prefix grows there, so "3 _ 3" is the only way to say token 3 twice
    quiet = torch.full((1, 3, embeddings.shape[0] + 1), -1e4)
    quiet[0, :, -1] = torch.tensor([-3.0, 20.0, -3.0])
    quiet[0, [0, 2], 3] = 2.0
    quiet[0, [0, 2], 1] = 0.0
    skipped = head.beam_search(quiet, torch.tensor([3]), beam=100, top_k=2)[0]
    kept = head.beam_search(quiet, torch.tensor([3]), beam=100, top_k=2, blank_skip=1.0)[0]
    assert skipped[0][0] == [3, 3] and kept[0][0] == [3, 3]
    assert len(skipped) < len(kept)  # the non-blank paths through frame 1 were not followed
    # top_k 1 offers only token 3 at frame 2; the prefix (1,) still continues by repeating its 1
    repeat = torch.full((1, 2, embeddings.shape[0] + 1), -1e4)
    repeat[0, :, -1] = torch.tensor([-20.0, -5.0])  # "_ 1", which top_k 1 cannot follow, is ~e-23
    repeat[0, 0, 1] = 3.0
    repeat[0, 1, 3], repeat[0, 1, 1] = 2.0, 1.5
    ranked = dict(
        (tuple(s), lp) for s, lp in head.beam_search(repeat, torch.tensor([2]), beam=10, top_k=1)[0]
    )
    exact = head.sequence_logp(repeat, torch.tensor([2]), [[1]])
    assert ranked[(1,)] == pytest.approx(float(exact[0]), abs=1e-4)  # "1 1" merged into (1,)


def test_score_sequences_ignores_the_emission_mask_and_floors_what_cannot_fit(lm) -> None:
    """Scoring another recogniser's text: a token the head may not emit still gets its likelihood (the
    mask is for decoding); a sequence too long for the frames gets a floor below every one that fits;
    an empty one is all blanks."""
    embeddings, _ = lm
    head = head_for(embeddings)
    hidden, lengths = head.hidden(torch.randn(1, 8, 8), torch.tensor([8]))  # 4 head frames
    full = head.sequence_logp(head.logits(hidden, torch.arange(embeddings.shape[0])), lengths, [[3, 5]])
    head.allow([5])  # token 3 can no longer be emitted
    assert float(head.sequence_logp(head.logits(hidden), lengths, [[3, 5]])[0]) == float("-inf")
    fits, masked, too_long, empty = head.score_sequences(hidden, lengths, [[5, 6], [3, 5], [3, 3, 3], []])
    assert masked == pytest.approx(float(full[0]), abs=1e-5)
    assert too_long < min(fits, masked, empty) and empty < 0


def test_compression_keeps_one_vector_per_emitted_token(lm) -> None:
    embeddings, _ = lm
    head = head_for(embeddings)
    v = embeddings.shape[0]
    logits = torch.full((2, 6, v + 1), -10.0)
    # row 0: blank, 3, 3, blank, 5, blank -> tokens 3, 5; row 1 (length 2): all blank -> its least-blank frame
    for t, label in enumerate([v, 3, 3, v, 5, v]):
        logits[0, t, label] = 10.0
    logits[1, :, v] = 10.0
    logits[1, 1, v] = 1.0
    vectors, lengths, starts = head.compress(logits, torch.tensor([6, 2]))
    assert lengths.tolist() == [2, 1] and vectors.shape == (2, 2, embeddings.shape[1])
    assert starts[0].tolist() == [1, 4] and starts[1, 0] == 1
    assert torch.allclose(
        vectors[0, 0], embeddings[3], atol=1e-3
    )  # a confident frame ~ its token's embedding
    assert torch.allclose(vectors[0, 1], embeddings[5], atol=1e-3)


def test_head_learns_to_emit_the_right_tokens_from_made_up_states(lm) -> None:
    """Each token has its own random 'sound' (a state vector); utterances are 2-4 tokens, each held for 4
    frames with blank-ish frames between. A few hundred steps of CTC make greedy decoding read them back."""
    embeddings, tokenizer = lm
    rng = np.random.default_rng(0)
    vocab = [tokenizer.encode(w, add_special_tokens=False)[0] for w in ("cat", "dog", "sat", "mat", "park")]
    sounds = {t: rng.standard_normal(8).astype(np.float32) * 2 for t in vocab}

    def utterance() -> tuple[torch.Tensor, list[int]]:
        ids = list(rng.choice(vocab, size=rng.integers(2, 5)))
        frames = []
        for t in ids:
            frames += [sounds[t]] * 4 + [rng.standard_normal(8).astype(np.float32) * 0.1] * 2
        return torch.from_numpy(np.stack(frames)), [int(t) for t in ids]

    head = head_for(embeddings)
    head.allow(vocab)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(300):
        batch = [utterance() for _ in range(8)]
        states = torch.nn.utils.rnn.pad_sequence([s for s, _ in batch], batch_first=True)
        lengths = torch.tensor([len(s) for s, _ in batch])
        hidden, out_lengths = head.hidden(states, lengths)
        loss = head.ctc_loss(hidden, out_lengths, [ids for _, ids in batch], negatives=vocab[:2])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    correct = 0
    for _ in range(20):
        states, ids = utterance()
        logits, n = head(states[None], torch.tensor([len(states)]))
        correct += [t for t, _, _ in head.greedy(logits, n)[0]] == ids
    assert correct >= 18, correct


def test_cached_states_and_on_the_fly_training_give_the_same_loss(tmp_path) -> None:
    """A speech-LLM's loss is the same whether its encoder runs in the step or its states come cached."""
    from llmasr.components.speech.encoders import encode_utterances, load_encoder
    from llmasr.components.speech.speechllm import SpeechBatch, SpeechLlmConfig, build_speechllm

    save_tiny_lm(tmp_path / "llm", WORDS, lowercase=True)
    save_tiny_whisper(tmp_path / "whisper")
    config = SpeechLlmConfig(
        encoder=str(tmp_path / "whisper"), lm=str(tmp_path / "llm"), adapter_kw={"stack": 4}
    )
    torch.manual_seed(0)
    online = build_speechllm(config)
    cached = build_speechllm(config, encoder=None, with_encoder=False, states_dim=16)
    cached.adapter.load_state_dict(online.adapter.state_dict())
    rng = np.random.default_rng(1)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 11000)]
    texts = ["the cat sat", "hello world"]
    encoder = load_encoder(str(tmp_path / "whisper"))
    states = [
        torch.from_numpy(s.astype(np.float32)) for s in encode_utterances(encoder, audio, dtype=torch.float32)
    ]
    with torch.no_grad():
        a = online.compute_losses(
            SpeechBatch(
                features=online.encoder.features(audio),
                feature_lengths=torch.tensor([16000, 11000]),
                texts=texts,
            )
        )
        padded = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
        b = cached.compute_losses(
            SpeechBatch(features=padded, feature_lengths=torch.tensor([len(s) for s in states]), texts=texts)
        )
    assert float(a.loss) == pytest.approx(float(b.loss), abs=1e-5)


def test_head_training_can_start_from_a_trained_head(lm, tmp_path) -> None:
    """`init` fine-tunes a trained head (e.g. on new voices): the model starts as that head, keeps what
    it could emit, and a head of other sizes is refused by name."""
    import json

    from llmasr.train.config import RecipeError, RunRecipe, StageRecipe
    from llmasr.train.ctc_head import CtcHeadRecipe, CtcHeadTask, StatesDataRecipe
    from llmasr.train.loop import fit

    embeddings, tokenizer = lm
    save_tiny_lm(tmp_path / "llm", WORDS, lowercase=True)
    states = tmp_path / "states"
    states.mkdir()
    rng = np.random.default_rng(0)
    texts = {f"u{i}": " ".join(rng.choice(WORDS, 3)) for i in range(8)}
    frames = [rng.standard_normal((40, 8)).astype(np.float16) for _ in texts]
    np.savez(
        states / "states-00000.npz",
        frames=np.concatenate(frames),
        offsets=np.cumsum([0] + [len(f) for f in frames]),
        ids=np.array(list(texts)),
    )
    (states / "texts.json").write_text(json.dumps({k: {"text": t, "entities": []} for k, t in texts.items()}))
    (states / "encoder.json").write_text(json.dumps({"encoder": None, "trim_tail": None}))

    def recipe(out: str, init: str | None = None, dim: int = 32, layers: int = 1) -> CtcHeadRecipe:
        model = CtcHeadConfig(lm=str(tmp_path / "llm"), trim_tail=None, input_dim=8, stack=2, dim=dim,
                              layers=layers, heads=2, ffn_dim=64)  # fmt: skip
        return CtcHeadRecipe(
            model=model,
            data=StatesDataRecipe(train=[str(states)], dev=[str(states)], batch_frames=200),
            stages=[StageRecipe(name="ctc", steps=2, lr=1e-3, train=["head"])],
            init=init,
            run=RunRecipe(output_dir=str(tmp_path / out), eval_every=0, save_every=0, log_every=1),
        )

    first = fit(CtcHeadTask(recipe("first")))
    trained = TokenCtcHead.load(first.export, embeddings)
    trained.allowed[WORDS_ID_EXTRA] = True  # as if the first head had also learned another token
    trained.save(tmp_path / "wider")
    start = CtcHeadTask(recipe("second", init=str(tmp_path / "wider"))).build(torch.device("cpu"))
    for name, value in trained.state_dict().items():
        assert torch.equal(start.state_dict()[name], value), name
    with pytest.raises(RecipeError, match="init .*wider.*another setup.*dim: 32 vs 16"):
        CtcHeadTask(recipe("third", init=str(tmp_path / "wider"), dim=16)).build(torch.device("cpu"))
    with pytest.raises(RecipeError, match="init .*wider.*another setup.*layers: 1 vs 0"):
        CtcHeadTask(recipe("fourth", init=str(tmp_path / "wider"), layers=0)).build(torch.device("cpu"))

    # a deeper head grows from it: the extra layer starts as the identity (same logits), then trains
    grown = CtcHeadTask(recipe("grown", init=str(tmp_path / "wider"), layers=3)).build(torch.device("cpu"))
    assert len(grown.trunk.layers) == 3
    x, lengths = torch.randn(2, 12, 8), torch.tensor([12, 7])
    trained.eval(), grown.eval()
    with torch.no_grad():
        want, _ = trained(x, lengths)
        got, _ = grown(x, lengths)
    assert torch.allclose(want[0], got[0], atol=1e-4) and torch.allclose(want[1, :4], got[1, :4], atol=1e-4)
    deeper = fit(CtcHeadTask(recipe("deeper", init=str(tmp_path / "wider"), layers=3)))
    moved = TokenCtcHead.load(deeper.export, embeddings).trunk.layers[2].linear2.weight
    assert moved.abs().sum() > 0  # the identity layer learned
