"""Loss and dev-WER curves of training runs, from their `log.csv` (what `llmasr train` writes).

    python benchmarks/plot_runs.py runs/ctc-head-tiny runs/speechllm-ctc-tiny --out docs/deep-curves.png

One row of two plots: training loss (each task's own: CTC or next-token; smoothed over 5 log points)
and dev WER, both against the run's wall-clock minutes (its `elapsed` column).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_log(run: Path) -> list[dict[str, str]]:
    """Rows of RUN/log.csv; raises SystemExit naming the run when it has no log."""
    path = run / "log.csv"
    if not path.is_file():
        raise SystemExit(f"error: {run}: no log.csv (not a training run folder)")
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/deep-curves.png"))
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    for run in args.runs:
        rows = read_log(run)
        label = run.name
        # a dev evaluation before training (eval_before) is a row with no loss, at minute 0
        minutes = [float(r["elapsed"] or 0) / 60 for r in rows]
        trained = [(m, float(r["loss"])) for m, r in zip(minutes, rows) if r.get("loss")]
        loss = [x for _, x in trained]
        windows = [loss[max(0, i - 4) : i + 1] for i in range(len(loss))]
        smooth = [sum(w) / len(w) for w in windows]
        ax_loss.plot([m for m, _ in trained], smooth, label=label)
        dev = [(m, float(r["dev_wer"]) * 100) for m, r in zip(minutes, rows) if r.get("dev_wer")]
        if dev:
            ax_wer.plot(*zip(*dev), marker="o", label=label)
    ax_loss.set(xlabel="training minutes (wall clock, 2 CPU cores)", ylabel="training loss", yscale="log")
    ax_wer.set(xlabel="training minutes (wall clock, 2 CPU cores)", ylabel="dev WER (%)")
    for ax in (ax_loss, ax_wer):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
