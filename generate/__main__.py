"""`python -m generate --config FILE [dotted.key=value ...]`: run or resume a generation.

Exit status, for scripts: 0 only when `num_instructions` were reached; 1 when the run stopped
before that (the cost cap, the request budget, a stall, a server that stayed unreachable past
the retry budget, or one that refused `retry.max_connection_failures` connections in a row before
ever answering), with the kept work saved and the reason in the JSON summary; 2 for user errors
(config, seeds, a missing or rejected API key, a price-less model under a cost cap, a 4xx the
server will not change its mind about), one line, no retries; 130 on Ctrl-C (kept work saved).
Errors are one line, without a traceback; each failed connection is also reported on stderr as
it happens (the URL and the network error, never the API key).
"""

from __future__ import annotations

import argparse
import json
import sys

from generate.config import api_key, load_config
from generate.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generate", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (see configs/self_instruct.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. lang=ko")
    args = parser.parse_args(argv)
    try:
        from generate.pipeline import Generator  # imported late: --help stays fast

        config = load_config(args.config, args.overrides)
        result = Generator(config, api_key(config, "python -m generate --config FILE")).run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: kept work is saved; run the same command again to resume", file=sys.stderr)
        return 130
    summary = {"kept": len(result.kept), "stop_reason": result.stop_reason,
               "rejected": dict(result.rejected), **result.usage, "output_dir": config.output_dir}
    print(json.dumps(summary, ensure_ascii=False))
    if result.stop_reason == "done":
        return 0
    if result.unreachable:  # a larger budget would not help; the URL and the network error do
        print(f"error: {result.stop_reason}", file=sys.stderr)
        return 1
    print(f"stopped before num_instructions={config.num_instructions}: {result.stop_reason}; kept work "
          f"saved in {config.output_dir}; run again (with a larger budget if one stopped it) to resume",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
