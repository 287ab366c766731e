"""`llmasr compare`: recipe checks, the table, the plot, skipped methods; one real run (integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmasr.apps.compare import MethodResult, markdown_table, plot, read_compare_recipe, run_compare
from llmasr.core.errors import LlmasrError


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "compare.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def test_recipe_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(LlmasrError, match="needs `manifests` and `methods`"):
        read_compare_recipe(_recipe(tmp_path, "asr: whisper-tiny.en\n"))
    with pytest.raises(LlmasrError, match="unknown key 'methods.0.lm'; allowed: name, prompts, options"):
        read_compare_recipe(_recipe(tmp_path, "manifests: {a: a.jsonl}\nmethods: [{name: x, lm: y}]\n"))
    with pytest.raises(LlmasrError, match="limit: expected a number"):
        read_compare_recipe(_recipe(tmp_path, "manifests: {a: a.jsonl}\nlimit: some\nmethods: [{name: x}]\n"))
    shipped = read_compare_recipe(Path("recipes/compare.yaml"), {"limit": 3})
    assert shipped.limit == 3
    # a speech-LLM is a method like any other: a recogniser named in its options
    assert {m.options.get("asr") for m in shipped.methods} >= {"speechllm-stack-tiny", "speechllm-ctc-tiny"}


def test_table_and_plot(tmp_path: Path) -> None:
    results = [
        MethodResult(
            "first pass",
            "beam",
            {"dev": 0.1, "dom": 0.2},
            {"dev": None, "dom": 0.5},
            {},
            10,
            2,
            0,
            39_000_000,
        ),
        MethodResult(
            "LLM",
            "rescored",
            {"dev": 0.08, "dom": 0.15},
            {"dev": None, "dom": 0.7},
            {},
            10,
            5,
            737_280,
            300_000_000,
        ),
        MethodResult("D3", skipped="no model"),
    ]
    table = markdown_table(results, ["dev", "dom"])
    lines = table.splitlines()
    assert lines[0].startswith(
        "| method | dev WER | dom WER | dom entity recall | RTFx"
    )  # no empty recall column
    assert "| first pass | 10.00% | 20.00% | 50.00% | 5.00 | 0 | 39.0M | beam |" in table
    assert "| LLM | 8.00% | 15.00% | 70.00% | 2.00 | 737k | 300.0M | rescored |" in table
    assert lines[-1].startswith("| D3 | - |") and lines[-1].endswith("not run: no model |")
    png = plot(results, ["dev", "dom"], tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_models_are_skipped_not_fatal(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("", encoding="utf-8")
    recipe = read_compare_recipe(
        _recipe(
            tmp_path,
            f"manifests: {{m: {manifest}}}\nmethods:\n"
            "  - {name: deep, options: {asr: no-such-deep-model}}\n"
            "  - {name: bad lm, options: {lm: no-such-lm}}\n",
        )
    )
    results = run_compare(recipe)
    assert "unknown asr model 'no-such-deep-model'" in (results[0].skipped or "")
    assert "unknown lm model 'no-such-lm'" in (results[1].skipped or "")
    with pytest.raises(LlmasrError, match="manifest not found"):
        run_compare(
            read_compare_recipe(_recipe(tmp_path, "manifests: {m: nope.jsonl}\nmethods: [{name: a}]\n"))
        )


@pytest.mark.integration
def test_compare_cli_on_real_speech(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llmasr.apps.cli import app
    from llmasr.data.manifest import write_manifest
    from llmasr.data.real import TESTDATA, pocketsphinx_utterances

    if not Path(TESTDATA).exists():
        pytest.skip("Debian package pocketsphinx-testdata not installed")
    utts = pocketsphinx_utterances(tmp_path / "real")[:3]
    manifest = write_manifest(utts, tmp_path / "real.jsonl")
    recipe = _recipe(
        tmp_path,
        f"manifests: {{real: {manifest}}}\n"
        "methods:\n"
        "  - {name: first pass, options: {lm: none, nbest: 1}}\n"
        "  - {name: GER, options: {lm: none, correct: true}}\n"
        "  - {name: D3, options: {asr: no-such-deep-model}}\n"
        f"output: {tmp_path / 'out.md'}\nplot: {tmp_path / 'out.png'}\njson: {tmp_path / 'out.json'}\n",
    )
    result = CliRunner().invoke(app, ["compare", str(recipe)])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert rows["first pass"]["wer"]["real"] < 0.3 and rows["first pass"]["trainable"] == 0
    assert rows["first pass"]["total"] > 30_000_000  # whisper-tiny.en
    assert rows["GER"]["wer"]["real"] < 0.3 and rows["GER"]["trainable"] > 0  # the corrector's LoRA
    assert rows["D3"]["skipped"]
    text = (tmp_path / "out.md").read_text()
    assert "| first pass |" in text and "out.png" in text and (tmp_path / "out.png").is_file()
