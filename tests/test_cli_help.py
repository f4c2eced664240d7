"""Every entry point answers `python -m <module> --help` with exit 0, a usage naming that command,
and its exit statuses: run as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.train_helpers import ROOT

ENTRY_POINTS = ["train", "train.evaluate", "generate", "generate.bench_dedup", "tools.bench",
                "tools.bench_attention", "tools.bench_checkpoint", "tools.bench_generate", "tools.chat",
                "tools.convert", "tools.data_stats", "tools.gpu_check", "tools.plan", "tools.plot",
                "tools.train_tokenizer", "tools.eval", "data.synthetic"]


def test_the_list_is_every_module_with_a_main():
    """Found independently: each file of the packages that runs code under `__name__ == "__main__"`."""
    found = set()
    for package in ("train", "tools", "generate", "data", "model"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.MULTILINE):
                module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
                found.add(module.removesuffix(".__main__"))
    assert found == set(ENTRY_POINTS)


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_exits_0_and_names_python_m_module(module):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} "), proc.stdout[:200]
    assert "Exit status" in proc.stdout and "Traceback" not in proc.stderr
