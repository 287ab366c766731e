from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from llmasr.data.manifest import Utterance

pytest.importorskip("lhotse")

from llmasr.data.lhotse_io import from_cutset, to_cutset  # noqa: E402


def test_round_trip(tmp_path: Path) -> None:
    utts = []
    for i in range(3):
        p = tmp_path / f"u{i}.flac"
        sf.write(p, np.full(8000 * (i + 1), 0.1, dtype=np.float32), 16000)
        utts.append(
            Utterance(
                f"u{i}",
                str(p),
                f"text {i}",
                duration=0.5 * (i + 1),
                entities=["x"] if i else [],
                prompt="p" if i == 1 else None,
                voice="flite:slt",
                augmentation="rir:room" if i == 2 else None,
                extra={"split": "dev"},
            )
        )
    cuts = to_cutset(utts)
    assert len(cuts) == 3 and cuts[0].supervisions[0].text == "text 0"
    back = from_cutset(cuts)
    assert back == utts
    path = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(path)
    from lhotse import load_manifest

    assert from_cutset(load_manifest(path)) == utts
