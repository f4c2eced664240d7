"""Cases in child processes, each under a time limit, and a markdown table that is written as
each row arrives (tools/gpu_check.py): a case that hangs, crashes or runs out of time is a row
saying so, and a run killed midway keeps every finished row on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path


def run_child(cmd: list[str], limit: float, log: Path, env: dict, cwd: Path) -> tuple[int | None, str]:
    """Run `cmd` (output to `log`) for at most `limit` seconds: (exit status or None on timeout,
    last line of output). Its own session, so a timeout kills its compile workers with it."""
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit, 0.001))
        except subprocess.TimeoutExpired:
            rc = None
        except BaseException:  # Ctrl-C or SIGTERM of the parent: the child is in another session
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        if rc is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return rc, (lines[-1] if lines else "(no output)")[:200]


class Report:
    """The table so far: each row printed (flushed) and written to OUT at once."""

    def __init__(self, out: Path, header: str, columns: list[str]):
        self.out, self.columns, self.rows = out, columns, []
        self.head = [header, "", self._line(columns), "|" + "---|" * len(columns)]
        out.mkdir(parents=True, exist_ok=True)
        (out / "rows.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh record
        print("\n".join(self.head), flush=True)

    @staticmethod
    def _line(cells: list) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    def add(self, row: dict) -> None:
        row = {c: row.get(c, "") for c in self.columns}
        self.rows.append(row)
        print(self._line(list(row.values())), flush=True)
        with (self.out / "rows.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        tmp = self.out / "table.md.tmp"
        tmp.write_text("\n".join(self.head + [self._line(list(r.values())) for r in self.rows]) + "\n")
        os.replace(tmp, self.out / "table.md")  # a reader (or a kill) never sees half a table


def case_limits(specs: list[str], default: float) -> tuple[float, dict]:
    """--case-timeout values: SECONDS sets the default, KEY=SECONDS one case's limit."""
    per = {}
    for s in specs:
        if "=" in s:
            k, v = s.split("=", 1)
            per[k] = float(v)
        else:
            default = float(s)
    return default, per
