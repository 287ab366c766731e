from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmasr.core.errors import ManifestError
from llmasr.data.manifest import Utterance, read_manifest, write_manifest


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_lines_and_relative_paths(tmp_path: Path) -> None:
    m = _write(
        tmp_path / "m.jsonl",
        [
            json.dumps({"id": "a", "audio": "audio/a.flac", "text": "hello", "duration": 1.5}),
            json.dumps(
                {
                    "audio": "/abs/b.wav",
                    "text": "world",
                    "entities": ["world"],
                    "prompt": "p",
                    "voice": "flite:slt",
                    "terms": "terms.txt",
                    "domain": "x",
                }
            ),
        ],
    )
    utts = list(read_manifest(m))
    assert [u.id for u in utts] == ["a", "b"]  # id defaults to the audio stem
    assert utts[0].audio == str(tmp_path.resolve() / "audio" / "a.flac")
    assert utts[0].duration == 1.5
    assert utts[1].audio == "/abs/b.wav"
    assert utts[1].entities == ["world"] and utts[1].prompt == "p" and utts[1].voice == "flite:slt"
    assert utts[1].terms == str(tmp_path.resolve() / "terms.txt")
    assert utts[1].extra["domain"] == "x"


def test_streaming_is_lazy(tmp_path: Path) -> None:
    m = _write(tmp_path / "m.jsonl", [json.dumps({"audio": "a.wav", "text": "t"}), "{broken"])
    it = read_manifest(m)
    assert next(it).id == "a"  # the bad line 2 is not read yet
    with pytest.raises(ManifestError):
        next(it)


def test_corrupt_json_raises_with_line_number(tmp_path: Path) -> None:
    m = _write(tmp_path / "m.jsonl", [json.dumps({"audio": "a.wav", "text": "t"}), "", "{not json"])
    with pytest.raises(ManifestError) as ei:
        list(read_manifest(m))
    assert ei.value.line == 3
    assert ei.value.path == str(m)
    assert "invalid JSON" in ei.value.problem


def test_on_error_reports_and_skips(tmp_path: Path) -> None:
    m = _write(
        tmp_path / "m.jsonl",
        [
            json.dumps({"audio": "a.wav", "text": "one"}),
            "{not json",
            json.dumps({"text": "no audio"}),
            json.dumps({"audio": "c.wav", "text": 3}),
            json.dumps(["a", "list"]),
            json.dumps({"audio": "d.wav", "text": "x", "duration": "long"}),
            json.dumps({"audio": "e.wav", "text": "x", "entities": "notalist"}),
            json.dumps({"audio": "f.wav", "text": "two"}),
        ],
    )
    errors: list[ManifestError] = []
    utts = list(read_manifest(m, on_error=errors.append))
    assert [u.text for u in utts] == ["one", "two"]
    assert [e.line for e in errors] == [2, 3, 4, 5, 6, 7]
    assert "missing required key 'audio'" in errors[1].problem
    assert "'text' must be a string" in errors[2].problem
    assert "JSON object" in errors[3].problem
    assert "duration" in errors[4].problem
    assert "entities" in errors[5].problem


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"audio": "a.wav"}, "missing required key 'text'"),
        ({"text": "x"}, "missing required key 'audio'"),
        ({"audio": 5, "text": "x"}, "'audio' must be a string"),
        ({"audio": "a.wav", "text": None}, "'text' must be a string"),
        ({"audio": "a.wav", "text": "x", "id": 7}, "'id'"),
        ({"audio": "a.wav", "text": "x", "duration": True}, "duration"),
        ({"audio": "a.wav", "text": "x", "prompt": 1}, "'prompt' must be a string"),
    ],
)
def test_missing_keys_and_wrong_types(tmp_path: Path, obj: dict, words: str) -> None:
    m = _write(tmp_path / "m.jsonl", [json.dumps(obj)])
    with pytest.raises(ManifestError) as ei:
        list(read_manifest(m))
    assert ei.value.line == 1
    assert words in ei.value.problem


def test_blank_lines_skipped(tmp_path: Path) -> None:
    m = _write(tmp_path / "m.jsonl", ["", "   ", json.dumps({"audio": "a.wav", "text": "t"}), "\t", ""])
    assert [u.id for u in read_manifest(m)] == ["a"]


def test_missing_file_is_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        list(read_manifest(tmp_path / "nope.jsonl"))


def test_write_roundtrip_relative(tmp_path: Path) -> None:
    audio = tmp_path / "audio" / "x.flac"
    utts = [
        Utterance(
            "x", str(audio), "hello there", 1.23456, ["hello"], "a prompt", extra={"terms": ["a", "b"]}
        ),
        Utterance("y", "/elsewhere/y.wav", "bye"),
    ]
    p = write_manifest(utts, tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["audio"] == "audio/x.flac"  # inside the manifest folder: written relative
    assert lines[0]["duration"] == 1.235
    assert lines[1]["audio"] == "/elsewhere/y.wav"
    back = list(read_manifest(p))
    assert back[0].audio == str(audio.resolve()) and back[0].entities == ["hello"]
    assert back[0].terms == ["a", "b"]
    assert back[1].duration is None


def test_write_is_atomic(tmp_path: Path) -> None:
    p = write_manifest([Utterance("a", str(tmp_path / "a.wav"), "old")], tmp_path / "m.jsonl")
    before = p.read_text(encoding="utf-8")

    def broken():
        yield Utterance("b", str(tmp_path / "b.wav"), "new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_manifest(broken(), p)
    assert p.read_text(encoding="utf-8") == before  # the old manifest is intact
    assert sorted(os.listdir(tmp_path)) == ["m.jsonl"]  # and no temp file is left behind
