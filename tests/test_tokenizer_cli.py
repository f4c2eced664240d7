"""A file that is neither tokenizer format: one line naming it, exit 2, in the CLIs that read one
beside `train`, `chat` and `convert` (tested with them): data_stats and train.evaluate."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.train_helpers import ROOT


def test_data_stats_and_evaluate_name_a_bad_tokenizer_in_one_line(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("not a tokenizer\n")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}]))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for cmd in (["tools.data_stats", "--data", str(data), "--tokenizer", str(bad)],
                ["train.evaluate", "--ckpt", str(ckpt), "--data", str(data), "--tokenizer", str(bad)]):
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == f"error: {bad}: neither a sentencepiece model nor a tiktoken BPE file"
