"""The crash-safe record of a run: one JSON object per line, appended as things happen.

Why a journal: API tokens cost money, so every response is written the moment it arrives, and
every candidate's decision (kept, or rejected with its reason) as it is made. A batch ends with
a `batch_end` line. After a crash (kill -9 included), `Journal.open` drops a torn last line,
keeps every complete batch, keeps the saved responses of unfinished batches (so they are not
paid for twice), and discards the half-written decisions of unfinished batches, which are then
re-made from the saved response with the same result. The repair is a temp file + rename, so a
crash during the repair leaves the old journal intact.

Line types: `header` (the settings that determine the output), `response`, `candidate`,
`batch_end`, and run-level lines kept whatever happens to batches: `adapt` (a change of the
request shape the server asked for), `batch_file` and `batch_submit` (Batch API file and batch
ids, so a resumed run polls the same batch instead of paying for a second one).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from generate.errors import UserError


@dataclass
class Replay:
    """What a previous run left: complete batches in order, and responses of unfinished ones."""

    batches: dict[int, list[dict]] = field(default_factory=dict)  # batch -> its lines, in order
    pending_responses: dict[int, dict] = field(default_factory=dict)
    run_records: list[dict] = field(default_factory=list)  # adapt / batch_file / batch_submit, in order


RUN_TYPES = ("adapt", "batch_file", "batch_submit")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, then rename over the target."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_lines(path: Path) -> list[dict]:
    """Complete JSON lines; a torn final line (a crash mid-write) is dropped."""
    raw = path.read_bytes()
    ends_cleanly = raw.endswith(b"\n")
    lines = [(n, line) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()]
    records = []
    for k, (n, line) in enumerate(lines):
        final = k == len(lines) - 1
        if final and not ends_cleanly:
            break  # the write of this line never finished
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if final:
                break
            raise UserError(f"{path} line {n}: malformed journal line; move the file away "
                            f"to start afresh") from None
        if not isinstance(rec, dict) or "type" not in rec:
            raise UserError(f"{path} line {n}: journal record without field 'type'")
        records.append(rec)
    return records


class Journal:
    """Append-only JSONL writer; `open` repairs and replays an existing file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None
        self._lock = threading.Lock()  # request threads journal adaptations too

    def open(self, header: dict) -> Replay:
        """Start a new journal or resume one written with the same header."""
        replay = Replay()
        records = _read_lines(self.path) if self.path.exists() else []
        if records:
            old = records[0]
            if old.get("type") != "header":
                raise UserError(f"{self.path} line 1: expected the journal header")
            diff = sorted(k for k in set(header) | set(old["settings"])
                          if header.get(k) != old["settings"].get(k))
            if diff:
                raise UserError(f"{self.path}: written with different settings ({', '.join(diff)}); "
                                f"use another output_dir or restore the settings to resume")
            replay = self._replay(records[1:])
            keep = [records[0]] + replay.run_records
            keep += [r for b in sorted(replay.batches) for r in replay.batches[b]]
            keep += [replay.pending_responses[b] for b in sorted(replay.pending_responses)]
            atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
        else:
            atomic_write_text(self.path, json.dumps({"type": "header", "settings": header}) + "\n")
        self._f = open(self.path, "a", encoding="utf-8")
        return replay

    @staticmethod
    def _replay(records: list[dict]) -> Replay:
        lines: dict[int, list[dict]] = {}
        done: set[int] = set()
        run_records = [rec for rec in records if rec["type"] in RUN_TYPES]
        for rec in records:
            b = rec.get("batch")
            if not isinstance(b, int):
                continue
            lines.setdefault(b, []).append(rec)
            if rec["type"] == "batch_end":
                done.add(b)
        replay = Replay(run_records=run_records)
        for b, recs in sorted(lines.items()):
            if b in done:
                replay.batches[b] = recs
            else:
                responses = [r for r in recs if r["type"] == "response"]
                if responses:
                    replay.pending_responses[b] = responses[-1]
        return replay

    def append(self, record: dict, sync: bool = False) -> None:
        """One line, flushed at once so a kill -9 loses at most the line being written."""
        with self._lock:
            self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._f.flush()
            if sync:
                os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
