"""What every training loop writes the same way: a CSV log that survives resume, numbered checkpoints."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class CsvLog:
    """`log.csv` with fixed columns. On resume, rows past the checkpoint's step are dropped: the
    resumed run writes them again, so the log reads as one uninterrupted run."""

    def __init__(self, path: Path, fields: Sequence[str], resume_step: int | None = None) -> None:
        self.path = path
        self.fields = tuple(fields)
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [row for row in csv.DictReader(fh) if int(row["step"]) <= resume_step]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: ("" if row.get(k) is None else row[k]) for k in self.fields}
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(clean)


def step_folders(root: Path, required: Sequence[str] = ()) -> list[Path]:
    """`root/step-N` folders holding every `required` file (complete checkpoints), oldest first."""
    found = [p for p in root.glob("step-*") if all((p / name).exists() for name in required)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep: int, required: Sequence[str] = ()) -> None:
    """Delete all but the newest `keep` checkpoints (0 keeps all)."""
    for old in step_folders(root, required)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
