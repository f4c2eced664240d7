"""`python -m train --config FILE [dotted.key=value ...]`, alone or under torchrun.

Mistakes a user can make (a wrong key or type, a missing file or checkpoint, bad data) end as
one line on stderr with exit status 2; a run that diverges, or whose checkpoint cannot be written
(full disk, quota, permissions), ends as one line with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from train.config import ConfigError, load_config


def _say(line: str) -> None:
    """One write per line: under torchrun the ranks share stderr, and print's separate writes of
    text and newline let two ranks' lines run together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0],
                                     epilog="Exit status: 0 trained; 1 the run diverged or a checkpoint could not "
                                            "be written; 2 bad input (config, files, data), one line on stderr.")
    parser.add_argument("--config", help="YAML file (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. optim.lr=1e-5 max_steps=10")
    ns = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    where = f"[rank {rank}] " if os.environ.get("WORLD_SIZE", "1") != "1" else ""
    try:
        cfg = load_config(ns.config, ns.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Imported after the config is valid: a typo should not wait for torch to load.
    from data.alpaca import DataError
    from model.checkpoint import CheckpointError
    from train.checkpoint import SaveError
    from train.loop import train
    from train.run import TrainingError
    from train.verify import ResumeError

    try:
        train(cfg)
    except (ConfigError, DataError, CheckpointError, ResumeError, FileNotFoundError) as e:
        _say(f"{where}error: {e}")
        return 2
    except (TrainingError, SaveError) as e:  # the run, or its storage, failed: not the user's input
        _say(f"{where}error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
