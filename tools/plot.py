"""Loss curve of a training run: python -m tools.plot RUN_DIR [--out PNG].

Reads RUN_DIR/metrics.jsonl (train/metrics.py: one row per optimizer step with step, loss, lr, ...;
evaluation rows carry eval_loss instead of loss) and writes a PNG of loss against step (raw, and
its running mean), eval_loss as points where present, and the learning rate on a second axis.
Default output: RUN_DIR/loss.png.

Exit status: 0 written; 2 bad input (no metrics file, a line that is not a JSON object, no training
rows) or matplotlib missing, each as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

INSTALL = "python -m pip install matplotlib==3.11.2"


class PlotError(Exception):
    """Bad input: reported as one line, exit 2."""


def _number(row: dict, key: str) -> float | None:
    """A finite number under `key`, else None (skipped steps log a non-finite loss)."""
    v = row.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series for loss, lr and eval_loss; raises PlotError naming file and line."""
    if not path.is_file():
        raise PlotError(f"{path}: no such file (a run writes metrics.jsonl into its output_dir)")
    series: dict[str, list[tuple[int, float]]] = {"loss": [], "lr": [], "eval_loss": []}
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{path}: line {lineno}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or _number(row, "step") is None:
                raise PlotError(f"{path}: line {lineno}: not a metrics row (a JSON object with a numeric step)")
            step = int(row["step"])
            for key in series:
                value = _number(row, key)
                if value is not None and not (key != "eval_loss" and row.get("skipped")):
                    series[key].append((step, value))
    if not series["loss"]:
        raise PlotError(f"{path}: no training rows with a finite loss")
    return series


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to window-1 before it: one step's loss depends on its batch's lengths."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(series: dict[str, list[tuple[int, float]]], out: Path, title: str, dpi: int = 100,
         smooth: int | None = None) -> None:
    """Write the PNG; matplotlib is imported here so that reading errors need no plotting library."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window: this runs on headless machines and in tests
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, losses = zip(*series["loss"], strict=True)
    window = smooth if smooth is not None else max(1, len(losses) // 50)
    if window > 1:
        ax.plot(steps, losses, color="tab:blue", linewidth=0.5, alpha=0.3, label="train loss")
        ax.plot(steps, trailing_mean(list(losses), window), color="tab:blue", linewidth=1.5,
                label=f"train loss, mean of {window} steps")
    else:
        ax.plot(steps, losses, color="tab:blue", linewidth=1, label="train loss")
    if series["eval_loss"]:
        es, ev = zip(*series["eval_loss"], strict=True)
        ax.plot(es, ev, "o-", color="tab:orange", markersize=4, label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")  # the tiny run falls from ~7 to ~0.01: a linear axis hides the tail
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if series["lr"]:
        ax2 = ax.twinx()
        ls, lv = zip(*series["lr"], strict=True)
        ax2.plot(ls, lv, color="tab:gray", linewidth=1, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.plot", description=__doc__.splitlines()[0],
                                epilog="Exit status: 0 PNG written; 2 no metrics.jsonl, a bad line (named), or "
                                       "matplotlib missing.")
    p.add_argument("run_dir", type=Path, help="a training run's output_dir (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/loss.png)")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--title", default=None, help="default: the run directory's name")
    p.add_argument("--smooth", type=int, default=None,
                   help="also draw the mean of this many steps (default: 1/50 of the run; 1 = raw only)")
    a = p.parse_args(argv)
    try:
        series = read_metrics(a.run_dir / "metrics.jsonl")
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"error: tools.plot needs matplotlib: {INSTALL}", file=sys.stderr)
        return 2
    if a.smooth is not None and a.smooth < 1:
        print("error: --smooth must be >= 1", file=sys.stderr)
        return 2
    out = a.out or a.run_dir / "loss.png"
    plot(series, out, a.title or a.run_dir.resolve().name, a.dpi, a.smooth)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
