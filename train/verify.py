"""Which checkpoints can be trusted: discovery, verification against the manifest, resume
selection and keep-K pruning (train/checkpoint.py writes and reads them; docs/CHECKPOINTS.md).

Verification is collective where it is expensive: the ranks split the SHA-256 work (rank r hashes
every world-th file) and gather the verdicts, so every rank reaches the same decision and the
cost per rank falls with the number of ranks.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from model.manifest import ManifestError, check_checksums, check_sizes, read_manifest
from train.distributed import gather_objects, rank, world_size

STEP_RE = re.compile(r"^step_(\d+)$")


class ResumeError(ValueError):
    """The requested checkpoint cannot be resumed (missing, corrupt, other world size); exit 2."""


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every `step_N` directory (verified or not), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return sorted(found)


def size_problem(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint judged by its manifest and file sizes (a stat per
    file), or None."""
    try:
        check_sizes(path, read_manifest(path)["files"])
    except ManifestError as e:
        return str(e)
    return None


def verified_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """The `step_N` directories whose manifest and file sizes check out, oldest first."""
    return [(n, p) for n, p in complete_checkpoints(root) if size_problem(p) is None]


def checkpoint_problem(path: Path, checksums: bool, local: bool = False) -> str | None:
    """Why `path` cannot be trusted, or None. Collective unless `local`: every rank calls it, the
    SHA-256 work is split across ranks (rank r hashes every world-th file) and all ranks return
    the same answer."""
    problem = size_problem(path)
    share = (0, 1) if local else (rank(), world_size())
    if problem is None and checksums:
        try:
            files = read_manifest(path)["files"]
            check_checksums(path, files, sorted(files)[share[0]::share[1]])
        except ManifestError as e:
            problem = str(e)
    if local:
        return problem
    problems = sorted({p for p in gather_objects(problem) if p})
    return problems[0] if problems else None


def resolve_resume(resume: str, root: Path, checksums: bool = True,
                   warn: Callable[[str], None] = print) -> Path | None:
    """none -> None; auto -> the newest checkpoint that verifies (None on a fresh run); else PATH,
    which must verify. Collective (verification is shared by the ranks); `warn` gets one line per
    skipped checkpoint. Corrupt checkpoints are reported, never deleted."""
    if resume == "none":
        found = complete_checkpoints(root)
        if found:  # a fresh run would mix its checkpoints with (and prune) the earlier run's
            raise ResumeError(f"{root} already holds checkpoints of an earlier run (newest {found[-1][1].name}): "
                              "pass resume=auto to continue it, or use another output_dir")
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        skipped = []
        for _, path in reversed(found):
            problem = checkpoint_problem(path, checksums)
            if problem is None:
                return path
            warn(f"resume: skipping {path.name}: {problem}")
            skipped.append(path.name)
        if skipped:  # every checkpoint is bad: starting over silently would hide a week's loss
            raise ResumeError(f"resume=auto: no checkpoint in {root} verifies ({', '.join(skipped)}); "
                              "move them away (or pick one with resume=PATH checkpoint.verify=sizes)")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise ResumeError(f"resume: no complete checkpoint at {path} (expected a checkpoints/step_N dir)")
    problem = checkpoint_problem(path, checksums)
    if problem is not None:
        raise ResumeError(f"resume: {problem}")
    return path


def clean_partial(root: Path) -> None:
    """Remove leftovers of a save that was interrupted (rank 0, at start-up)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp_step_"):
                shutil.rmtree(p, ignore_errors=True)


def prune(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` verified checkpoints. Only verified ones are counted or
    deleted: a corrupt one is left for a person to look at, and the newest verified one (the
    checkpoint just written) always stays."""
    doomed = [p for _, p in verified_checkpoints(root)[:-max(keep, 1)]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
