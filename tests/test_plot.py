"""tools.plot: a metrics.jsonl with known values becomes a PNG; bad input is one line, exit 2."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

from tools import plot

pytest.importorskip("matplotlib")  # optional dependency: requirements-dev.txt pins it

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(run, rows, extra_lines=()):
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run / "metrics.jsonl"


def known_rows():
    """40 training steps with a falling loss and a warmup-then-decay lr, plus two eval rows, as train/metrics.py writes them."""
    rows = []
    for s in range(1, 41):
        rows.append({"step": s, "epoch": 0, "loss": 5.0 / s, "lr": min(s, 10) * 1e-4 * (1 - s / 50),
                     "grad_norm": 1.0, "tokens": 100, "skipped": False, "tokens_per_s": 1e3, "mfu": None})
        if s in (20, 40):
            rows.append({"step": s, "eval_loss": 6.0 / s})
    return rows


def png_size(path):
    """Width and height from the IHDR chunk, which the PNG format puts right after the magic."""
    head = path.read_bytes()[:24]
    return struct.unpack(">II", head[16:24])


def test_known_values_make_a_png(tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run, known_rows())
    assert plot.main([str(run)]) == 0
    out = run / "loss.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 5_000 < len(data) < 500_000  # a real drawing, small enough to commit
    assert png_size(out) == (700, 400)  # figsize 7x4 inches at the default dpi 100
    assert f"wrote {out}" in capsys.readouterr().err


def test_series_read_back_exactly(tmp_path):
    path = write_metrics(tmp_path / "run", known_rows())
    series = plot.read_metrics(path)
    assert series["loss"] == [(s, 5.0 / s) for s in range(1, 41)]
    assert series["eval_loss"] == [(20, 0.3), (40, 0.15)]
    assert series["lr"][9] == (10, pytest.approx(10 * 1e-4 * 0.8))


def test_skipped_and_nonfinite_steps_are_left_out(tmp_path):
    rows = [{"step": 1, "loss": 2.0, "lr": 1e-3}, {"step": 2, "loss": math.nan, "lr": 1e-3, "skipped": True},
            {"step": 3, "loss": 1.0, "lr": 1e-3}]
    series = plot.read_metrics(write_metrics(tmp_path / "run", rows))
    assert series["loss"] == [(1, 2.0), (3, 1.0)]
    assert [s for s, _ in series["lr"]] == [1, 3]


def test_trailing_mean_by_hand():
    assert plot.trailing_mean([4.0, 2.0, 6.0, 0.0, 1.0], 3) == [4.0, 3.0, 4.0, 8.0 / 3, 7.0 / 3]
    assert plot.trailing_mean([1.0, 5.0], 1) == [1.0, 5.0]


def test_out_path_and_no_eval_rows(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, [r for r in known_rows() if "loss" in r])
    out = tmp_path / "pics" / "curve.png"
    assert plot.main([str(run), "--out", str(out), "--dpi", "50", "--smooth", "1"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert png_size(out) == (350, 200)
    assert not (run / "loss.png").exists()


def test_bad_json_line_names_file_and_line(tmp_path, capsys):
    run = tmp_path / "run"
    path = write_metrics(run, known_rows()[:3], extra_lines=['{"step": 4, "loss": 1.0'])
    assert plot.main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: {path}: line 4: not JSON")
    assert not (run / "loss.png").exists()


def test_row_without_step_is_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    path = write_metrics(run, [{"step": 1, "loss": 1.0}, [1, 2]])
    assert plot.main([str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: line 2: not a metrics row (a JSON object with a numeric step)")


def test_missing_file_is_one_line(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere/metrics.jsonl: no such file" in err[0]


def test_missing_matplotlib_names_the_pip_command(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    write_metrics(run, known_rows())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert plot.main([str(run)]) == 2
    assert capsys.readouterr().err.strip() == "error: tools.plot needs matplotlib: python -m pip install matplotlib==3.11.2"
