"""Per-utterance prompts and term lists as evaluation reads them from a manifest."""

from __future__ import annotations

import json
from pathlib import Path

from llmasr.data.manifest import read_manifest, utterance_prompt


def test_terms_file_relative_to_the_manifest_and_inline_lists(tmp_path: Path) -> None:
    (tmp_path / "terms.txt").write_text("metoprolol\n# comment\napixaban\n", encoding="utf-8")
    lines = [
        {"audio": "a.wav", "text": "x", "prompt": "Clinical notes.", "terms": "terms.txt"},
        {"audio": "b.wav", "text": "y", "terms": ["kubectl"]},
        {"audio": "c.wav", "text": "z"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    a, b, c = read_manifest(manifest)
    assert utterance_prompt(a) == ("Clinical notes.", ["metoprolol", "apixaban"])
    assert utterance_prompt(b) == (None, ["kubectl"])
    assert utterance_prompt(c) == (None, None)
