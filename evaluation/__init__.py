"""Does the trained model follow instructions? Batched generation of responses for a checkpoint
(`evaluation.generation`), IFEval's verifiable instructions scored offline (`evaluation.ifeval`),
and an AlpacaEval-style pairwise judge with a length-controlled win rate (`evaluation.judge`).
The command line is `python -m tools.eval`."""
