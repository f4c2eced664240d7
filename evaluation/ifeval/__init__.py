"""IFEval (Zhou et al. 2023, arXiv 2311.07911), offline: the 25 verifiable-instruction checkers and
strict/loose accuracy at prompt and instruction level. `score(responses, data)` is the library
entry point; `python -m tools.eval ifeval` the command line (`evaluation.ifeval.cli`)."""

from evaluation.ifeval.scoring import CHECKERS, IFEvalInputError, loose_variants, score, verdicts

__all__ = ["CHECKERS", "IFEvalInputError", "loose_variants", "score", "verdicts"]
