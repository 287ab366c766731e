"""Speech-LLM recipes, data, the one staged/resumable training loop and speech-LLM inference through the
same pipeline as any recogniser, on tiny random models."""

from __future__ import annotations

import csv
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from llmasr.train.config import RecipeError, dump_recipe, load_recipe
from llmasr.train.loop import fit, latest_checkpoint
from llmasr.train.speechllm import Recipe, SpeechLlmTask
from tests.tiny import save_tiny_lm, save_tiny_whisper

torch.set_num_threads(1)

HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install 'peft>=0.13')")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

WORDS = "the a cat dog sat on mat ran to park in house big small red blue hello world".split()
TEXTS = [
    "the cat sat on the mat",
    "hello world",
    "a big red dog ran to the park",
    "the small blue house",
    "hello the dog",
    "a cat in the house",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random Llama (+ word-level tokenizer) and a tiny random Whisper, saved as folders."""
    root = tmp_path_factory.mktemp("tiny-models")
    save_tiny_lm(root / "llm", WORDS, lowercase=True)
    save_tiny_whisper(root / "whisper")
    return {"lm": str(root / "llm"), "encoder": str(root / "whisper")}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short tone 'utterances' (the content does not matter) with transcripts."""
    root = tmp_path_factory.mktemp("data")
    rows = []
    for i, text in enumerate(TEXTS):
        seconds = 0.5 + 0.2 * i
        t = np.arange(int(16000 * seconds)) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        sf.write(root / f"u{i}.wav", audio.astype(np.float32), 16000)
        row = {"id": f"u{i}", "audio": f"u{i}.wav", "text": text, "duration": round(seconds, 3)}
        if i == 1:
            row["prompt"], row["terms"] = "greetings", ["hello", "world"]
        rows.append(json.dumps(row))
    path = root / "train.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _recipe(models: dict[str, str], manifest: Path, out: Path, *extra: str, stages: str = "one") -> Recipe:
    stage_sets = {
        "one": ["stages.0.name=adapter", "stages.0.steps=6", "stages.0.lr=3e-3", "stages.0.train=[adapter]"],
        "two": [
            "stages.0.name=adapter",
            "stages.0.steps=2",
            "stages.0.lr=3e-3",
            "stages.0.train=[adapter]",
            "stages.1.name=lora",
            "stages.1.steps=2",
            "stages.1.lr=3e-3",
            "stages.1.train=[adapter, lora]",
            "model.lora.r=2",
            "model.lora.dropout=0",
        ],
    }[stages]
    return load_recipe(
        None,
        [
            f"model.encoder={models['encoder']}",
            f"model.lm={models['lm']}",
            "model.adapter_kw={stack: 10}",
            "model.max_new_tokens=4",
            f"data.train={manifest}",
            f"data.dev={manifest}",
            "data.batch_seconds=2.5",
            "data.num_buckets=1",
            f"run.output_dir={out}",
            "run.log_every=1",
            "run.eval_every=0",
            "run.save_every=0",
            "run.max_dev_utterances=2",
            "optim.weight_decay=0",
            *stage_sets,
            *extra,
        ],
    )


def _log(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------------------------- recipes


def test_recipe_yaml_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: {adapter: char_ctc, ctc_weight: 0.3}\n"
        "stages:\n  - {name: ctc, steps: 10, train: [ctc_head, adapter]}\n"
        "run: {mixed_precision: bf16}\n",
        encoding="utf-8",
    )
    r = load_recipe(path, ["stages.0.lr=2e-3", "optim.grad_accum=4", "run.output_dir=123", "model.lora.r=4"])
    assert r.model.adapter == "char_ctc" and r.model.ctc_weight == 0.3 and r.run.mixed_precision == "bf16"
    assert r.stages[0].lr == 2e-3 and isinstance(r.stages[0].lr, float)
    assert r.optim.grad_accum == 4 and r.run.output_dir == "123"  # cast to the field's type
    assert r.model.lora is not None and r.model.lora.r == 4 and r.model.lora.alpha == 16  # defaults fill in
    assert r.data.batch_seconds == Recipe().data.batch_seconds  # untouched fields keep the defaults
    assert load_recipe(path, ["model.lora=null"]).model.lora is None
    r2 = load_recipe(
        path, ["stages.1.name=lora", "stages.1.steps=5", "stages.1.train=[lora]", "model.lora.r=8"]
    )
    assert [s.name for s in r2.stages] == ["ctc", "lora"]
    # the resolved recipe round-trips through YAML
    dump_recipe(r2, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml") == r2
    with pytest.raises(RecipeError, match=r"unknown key 'model.nope'.*allowed: encoder, trim_tail, lm"):
        load_recipe(path, ["model.nope=1"])
    with pytest.raises(RecipeError, match=r"unknown key 'optim.lr'"):
        load_recipe(path, ["optim.lr=1"])
    with pytest.raises(RecipeError, match="optim.grad_accum: expected a whole number"):
        load_recipe(path, ["optim.grad_accum=2.5"])
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe(path, ["optim.grad_accum"])
    with pytest.raises(RecipeError, match="trains lora but model.lora is null"):
        load_recipe(path, ["stages.0.train=[lora]"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {grad_clip: 1, momentum: 0.9}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"unknown key 'optim.momentum'; allowed: weight_decay"):
        load_recipe(bad)


def test_shipped_recipes_load() -> None:
    root = Path(__file__).resolve().parents[1] / "recipes"
    names = {p.name for p in root.glob("*.yaml")}
    assert {"d3_stack_gemma.yaml", "d4_ctc_gemma.yaml", "tiny_cpu.yaml"} <= names
    for p in root.glob("*.yaml"):
        if p.name == "compare.yaml":
            with pytest.raises(RecipeError, match="run it with `llmasr compare`"):
                load_recipe(p)
            continue
        r = load_recipe(p)
        assert r.stages


# ---------------------------------------------------------------------------------------- data


def test_task_batches_prompts_and_ctc_targets(models: dict[str, str], manifest: Path, tmp_path: Path) -> None:
    from llmasr.components.speech.adapters import CHAR_VOCAB, char_ids

    assert len(CHAR_VOCAB) == 29 and CHAR_VOCAB[0] == "<blank>"
    assert char_ids("Don't 2!") == [4, 15, 14, 27, 20, 28, 20, 23, 15]  # "don't two"
    task = SpeechLlmTask(_recipe(models, manifest, tmp_path / "run"))
    batches = task.epoch_batches(0, 0, 1)
    assert sorted(u.id for b in batches for u in b) == [f"u{i}" for i in range(6)]
    assert all(sum(u.duration for u in b) <= 2.5 for b in batches)
    assert task.epoch_batches(1, 0, 1) != batches or len(batches) == 1
    halves = [task.epoch_batches(0, r, 2) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1])
    task.build(torch.device("cpu"))
    task.with_ctc = True
    batch = task.collate(batches[0])
    assert batch.feature_lengths.tolist() == [int(16000 * u.duration) for u in batches[0]]
    for i, u in enumerate(batches[0]):
        n = int(batch.ctc_target_lengths[i])
        assert batch.ctc_targets[i, :n].tolist() == char_ids(u.text)
    with_prompt = next(b for b in batches if any(u.id == "u1" for u in b))
    got = task.collate(with_prompt)
    i = [u.id for u in with_prompt].index("u1")
    assert got.domains[i] == "greetings" and got.terms[i] == ["hello", "world"]


# ---------------------------------------------------------------------------------------- training


def test_training_lowers_loss_and_writes_checkpoint(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "run"
    # one batch holds all six utterances: every step sees the same data, so the loss must fall
    extra = ("stages.0.steps=8", "stages.0.lr=3e-2", "stages.0.schedule=constant", "data.batch_seconds=10")
    recipe = _recipe(models, manifest, out, *extra)
    summary = fit(SpeechLlmTask(recipe))
    rows = _log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.05 and max(losses[-3:]) < min(losses[:2]), losses
    assert summary.steps == 8 and summary.loss == pytest.approx(losses[-1])
    assert "dev_wer" in summary.dev and rows[-1]["dev_wer"] != ""  # dev WER at the end
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and ckpt.name == "step-0000008"
    state = load_file(str(ckpt / "weights.safetensors"))
    assert all(k.startswith("adapter.") for k in state)
    from llmasr.components.speech.speechllm import build_speechllm, set_trainable

    model = build_speechllm(recipe.model)
    set_trainable(model, recipe.trained_parts())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable  # only trainable weights: no encoder, no LLM
    assert load_recipe(out / "recipe.yaml") == recipe
    assert load_recipe(Path(summary.export) / "recipe.yaml") == recipe  # what ships: weights + recipe
    st = json.loads((ckpt / "state.json").read_text())
    assert st["step"] == 8 and st["stage_name"] == "adapter" and (ckpt / "optimizer.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 8


@needs_peft
def test_stages_switch_trainable_parts(models: dict[str, str], manifest: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "run"
    summary = fit(SpeechLlmTask(_recipe(models, manifest, out, stages="two")))
    rows = _log(out)
    assert [r["stage"] for r in rows] == ["adapter", "adapter", "lora", "lora"]
    assert summary.trainable["lora"] > summary.trainable["adapter"]  # LoRA joins in stage two
    state = load_file(str(latest_checkpoint(out) / "weights.safetensors"))
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and all(k.startswith("adapter.") or "lora_" in k for k in state)
    # LoRA B starts at zero and trained only in stage two: it moved
    assert any(float(state[k].abs().sum()) > 0 for k in lora_keys if "lora_B" in k)


def test_resume_continues_the_same_losses(models: dict[str, str], manifest: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    fit(SpeechLlmTask(_recipe(models, manifest, full)))
    part = tmp_path / "part"
    recipe = _recipe(models, manifest, part)
    first = fit(SpeechLlmTask(recipe), max_steps=2)  # "interrupted" mid-epoch after step 2
    assert first.stopped_early and first.steps == 2 and latest_checkpoint(part).name == "step-0000002"
    again = fit(SpeechLlmTask(recipe), resume=True)
    assert again.steps == 6 and not again.stopped_early
    expected = [(r["step"], r["loss"]) for r in _log(full)]
    assert [(r["step"], r["loss"]) for r in _log(part)] == expected


def test_init_starts_from_a_trained_speech_llm_and_refuses_one_that_does_not_fit(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """`init`: fine-tuning starts at the trained weights (its first loss is the first run's last level,
    not a fresh model's); weights of another adapter shape are refused with the init named."""
    from safetensors.torch import load_file

    from llmasr.components.speech.speechllm import build_speechllm
    from llmasr.train.speechllm import load_init

    extra = ("stages.0.steps=8", "stages.0.lr=3e-2", "stages.0.schedule=constant", "data.batch_seconds=10")
    first = fit(SpeechLlmTask(_recipe(models, manifest, tmp_path / "a", *extra)))
    fresh = [float(r["loss"]) for r in _log(tmp_path / "a")]
    recipe = _recipe(models, manifest, tmp_path / "b", *extra, f"init={tmp_path / 'a'}")
    task = SpeechLlmTask(recipe)
    with pytest.warns(UserWarning, match="replays its batches in the same order"):  # the same seed and data
        model = task.build(torch.device("cpu"))
    reseeded = _recipe(models, manifest, tmp_path / "b2", *extra, f"init={tmp_path / 'a'}", "run.seed=2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpeechLlmTask(reseeded).build(torch.device("cpu"))
    assert not [w for w in caught if "replays" in str(w.message)]
    trained = load_file(str(Path(first.export) / "model.safetensors"))
    state = model.trainable_state_dict()
    assert trained and all(torch.equal(state[k], v) for k, v in trained.items())
    # a frozen token CTC head exported inside the adapter is not loaded: the recipe's model.head is kept
    from safetensors.torch import save_file

    (tmp_path / "with-head").mkdir()
    save_file(
        {**trained, "adapter.head.inp.weight": torch.ones(3, 3)},
        str(tmp_path / "with-head" / "model.safetensors"),
    )
    (tmp_path / "with-head" / "recipe.yaml").write_text((Path(first.export) / "recipe.yaml").read_text())
    load_init(model, str(tmp_path / "with-head"))
    with pytest.warns(UserWarning, match="replays"):
        fit(SpeechLlmTask(recipe))
    again = [float(r["loss"]) for r in _log(tmp_path / "b")]
    assert again[0] < fresh[0] - 0.05 and again[0] < fresh[2], (fresh, again)
    other = _recipe(models, manifest, tmp_path / "c", "model.adapter_kw={stack: 5}")
    wrong = build_speechllm(other.model)
    with pytest.raises(RecipeError, match=r"init '.*a': a speech-LLM of another setup .*adapter_kw"):
        load_init(wrong, str(tmp_path / "a"), other.model)
    with pytest.raises(RecipeError, match=r"init '.*a': its weights do not fit this model: .*size mismatch"):
        load_init(wrong, str(tmp_path / "a"))
    with pytest.raises(RecipeError, match="init 'no-such-model': not a trained speech-LLM"):
        load_init(wrong, "no-such-model")


# ---------------------------------------------------------------------------------------- inference


def test_speech_llm_is_a_recognizer_in_the_one_pipeline(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """A trained speech-LLM gives N-best lists with scores and goes through the same pipeline, writers
    and evaluation as Whisper: long audio split by VAD, LM rescoring, correction."""
    from llmasr.apps.evaluate import evaluate
    from llmasr.apps.writers import render
    from llmasr.components.asr.speechllm import SpeechLlmRecognizer
    from llmasr.core.audio import load_audio
    from llmasr.data.manifest import read_manifest
    from llmasr.decoding.options import make_options
    from llmasr.decoding.pipeline import Pipeline

    out = tmp_path / "run"
    fit(SpeechLlmTask(_recipe(models, manifest, out, "stages.0.steps=2")))
    rec = SpeechLlmRecognizer.load(out)  # a run folder: its export
    audio = [load_audio(manifest.parent / f"u{i}.wav") for i in range(3)]
    lists = rec.nbest(audio, 3)
    assert len(lists) == 3
    for nbest in lists:
        assert nbest and len(nbest) <= 3
        scores = [h.am_score for h in nbest]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    assert rec.nbest([], 2) == []
    long = np.concatenate([audio[0], np.zeros(16000, np.float32), audio[2]])
    pipe = Pipeline(make_options(asr=str(out), lm=None, nbest=2), recognizer=rec)
    tr = pipe.transcribe(long, name="long.wav")
    assert tr.source == "long.wav" and tr.duration == pytest.approx(len(long) / 16000)
    assert all(0 <= s.start < s.end <= tr.duration for s in tr.segments)
    assert json.loads(render(tr, "json"))["source"] == "long.wav"
    render(tr, "srt")
    report = evaluate(pipe, list(read_manifest(manifest))[:2])
    assert report.summary()["utterances"] == 2 and report.wer is not None
    # the same pipeline rescores the speech-LLM's N-best with a (tiny) LLM and corrects the choice
    from llmasr.decoding.rescore import Weights

    opts = make_options(
        asr=str(out), lm=models["lm"], nbest=3, weights=Weights(lm_weight=0.5, word_bonus=0.1),
        correct=True, corrector=models["lm"],
    )  # fmt: skip
    pipe = Pipeline(opts, recognizer=rec)
    tr = pipe.transcribe(audio[1], name="u1.wav")
    assert tr.info["lm"] and tr.info["corrector"] and tr.info["corrections_accepted"] is not None
    [seg] = tr.segments
    assert seg.nbest and all(h.lm_score is not None and h.score is not None for h in seg.nbest)
    chosen = max(seg.nbest, key=lambda h: h.score)
    assert seg.first_pass_text == seg.nbest[0].text and chosen.text.strip()


def test_speech_llm_scores_any_text_as_it_scores_its_own_and_combines_with_others(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """`score_texts` (teacher forcing) gives each text the total of the training loss's per-token
    log-probabilities (alone or batched with a longer text), so a speech-LLM joins `--asr A,B`: every
    merged text is scored by both. (On the shipped D3 it matches beam search's own totals to 0.003.)"""
    from llmasr.components.asr.combined import CombinedRecognizer
    from llmasr.components.asr.speechllm import SpeechLlmRecognizer
    from llmasr.components.speech.speechllm import SpeechBatch
    from llmasr.core.audio import load_audio

    out = tmp_path / "run"
    fit(SpeechLlmTask(_recipe(models, manifest, out, "stages.0.steps=2")))
    rec = SpeechLlmRecognizer.load(out)
    audio = load_audio(manifest.parent / "u1.wav")
    texts = ["the cat sat", "a big red dog ran to the park"]
    pair = rec.score_texts(audio, texts)
    features, lengths = rec._inputs([audio])
    for text, score in zip(texts, pair):
        assert rec.score_texts(audio, [text]) == [pytest.approx(score, abs=1e-4)]
        batch = SpeechBatch(features=features, feature_lengths=lengths, texts=[text])
        with torch.no_grad():
            loss = rec.model.compute_losses(batch).lm_loss  # mean nats per target token (with EOS)
        assert score == pytest.approx(-float(loss) * len(rec.model.target_ids(text)), abs=1e-3)
    assert rec.score_texts(audio, []) == []
    both = CombinedRecognizer([rec, SpeechLlmRecognizer.load(out, name="again")])
    merged = both.nbest([audio], 2)[0]
    assert merged and all(h.other_am == pytest.approx(h.am_score, abs=1e-3) for h in merged)


def test_trimmed_speech_llm_reads_a_segment_the_same_alone_or_in_a_batch(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """With a trimmed encoder window, a short segment batched with a long one is not read over the
    long one's padding: the N-best is the same as when it is decoded alone."""
    from llmasr.components.asr.speechllm import SpeechLlmRecognizer
    from llmasr.core.audio import load_audio

    out = tmp_path / "run"
    fit(SpeechLlmTask(_recipe(models, manifest, out, "stages.0.steps=2", "model.trim_tail=0.2")))
    rec = SpeechLlmRecognizer.load(out)
    audio = [load_audio(manifest.parent / f"u{i}.wav") for i in (0, 5)]
    batched = rec.nbest(audio, 2)
    for a, together in zip(audio, batched):
        [alone] = rec.nbest([a], 2)
        assert [h.text for h in together] == [h.text for h in alone]
        assert [h.am_score for h in together] == pytest.approx([h.am_score for h in alone], abs=1e-4)


def test_loaded_speech_llm_decodes_with_lora_merged_and_the_same_words(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """A recogniser folds its LoRA into the LLM's weights; the N-best is the one of the unmerged model."""
    from llmasr.components.asr.speechllm import SpeechLlmRecognizer
    from llmasr.core.audio import load_audio

    out = tmp_path / "run"
    fit(SpeechLlmTask(_recipe(models, manifest, out, stages="two")))
    rec = SpeechLlmRecognizer.load(out)
    assert rec.model.llm.base_model.model.model.layers[0].self_attn.q_proj.merged
    audio = [load_audio(manifest.parent / f"u{i}.wav") for i in (1, 3)]
    merged = rec.nbest(audio, 2)
    rec.model.llm.unmerge_adapter()
    for a, b in zip(merged, rec.nbest(audio, 2)):
        assert [h.text for h in a] == [h.text for h in b]
        assert [h.am_score for h in a] == pytest.approx([h.am_score for h in b], abs=1e-5)
    with rec.model.llm.disable_adapter():  # the LoRA matters, so the equality above says something
        plain = rec.nbest(audio, 2)
    assert any(abs(a[0].am_score - b[0].am_score) > 1e-4 for a, b in zip(merged, plain))


def test_cli_reports_recipe_errors(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from llmasr.train.cli import train as train_cmd

    app = typer.Typer()
    app.command()(train_cmd)
    path = tmp_path / "r.yaml"
    path.write_text("run: {seed: 1}\n", encoding="utf-8")
    result = CliRunner().invoke(app, [str(path), "--set", "run.sed=2"])
    assert result.exit_code == 1
    assert "unknown key 'run.sed'" in result.output and "allowed: output_dir" in result.output


def test_cli_transcribes_and_evaluates_with_a_speech_llm(
    models: dict[str, str], manifest: Path, tmp_path: Path
) -> None:
    """`--asr RUN_FOLDER` goes through the same CLI, writers and evaluation as Whisper."""
    from typer.testing import CliRunner

    from llmasr.apps.cli import app

    out = tmp_path / "run"
    fit(SpeechLlmTask(_recipe(models, manifest, out, "stages.0.steps=1")))
    runner = CliRunner()
    wav = manifest.parent / "u0.wav"
    res = runner.invoke(app, ["transcribe", str(wav), "--asr", str(out), "--lm", "none", "-f", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["source"] == str(wav) and data["info"]["asr"] == str(out)
    report = tmp_path / "r.json"
    res = runner.invoke(
        app, ["eval", str(manifest), "--asr", str(out), "--lm", "none", "--json", str(report)]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(report.read_text())["utterances"] == 6
    # options that cannot act where they are given are errors that say why, not silently dropped
    for args, message in (
        (["--correct-max-change", "0.3"], "--correct-max-change acts only with --correct"),
        (["--lm-weight", "0.5"], "--lm-weight has no effect without an LM"),
        (["--nbest", "40"], "gives at most 32"),
    ):
        res = runner.invoke(app, ["transcribe", str(wav), "--asr", str(out), "--lm", "none", *args])
        assert res.exit_code == 1 and message in res.output, res.output


def test_recipe_validation_catches_untrainable_ctc_head_and_unknown_adapter() -> None:
    with pytest.raises(RecipeError, match="ctc_weight > 0"):
        load_recipe(None, ["stages.0.steps=1", "model.adapter=char_ctc", "model.ctc_weight=0"])
    with pytest.raises(RecipeError, match="model.adapter 'stak'"):
        load_recipe(None, ["stages.0.steps=1", "model.adapter=stak"])
    with pytest.raises(RecipeError, match="set model.head"):
        load_recipe(None, ["stages.0.steps=1", "model.adapter=ctc"])


def test_xattn_recipe_trains_saves_and_loads(models: dict[str, str], manifest: Path, tmp_path: Path) -> None:
    """Gated cross-attention through the real loop: the blocks train, land in the checkpoint, load back."""
    from safetensors.torch import load_file

    from llmasr.components.asr.speechllm import SpeechLlmRecognizer
    from llmasr.core.audio import load_audio

    out = tmp_path / "run"
    recipe = _recipe(
        models,
        manifest,
        out,
        "model.fusion=xattn",
        "model.xattn_every=1",
        "model.xattn_heads=2",
        "stages.0.train=[adapter, xattn]",
    )
    summary = fit(SpeechLlmTask(recipe))
    saved = load_file(str(Path(summary.export) / "model.safetensors"))
    gates = [v for k, v in saved.items() if k.endswith("attn_gate")]
    assert len(gates) == 2 and any(float(g.abs()) > 0 for g in gates)  # one block per layer, opened
    rec = SpeechLlmRecognizer.load(out)
    assert rec.model.xattn is not None and len(rec.model.xattn.blocks) == 2
    audio = [load_audio(manifest.parent / f"u{i}.wav") for i in range(2)]
    assert len(rec.nbest(audio, 1)) == 2
