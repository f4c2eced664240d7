"""Self-instruct data generation (Alpaca's `generate_instruction.py`, rebuilt for today's APIs).

Run it as `python -m generate --config configs/self_instruct.yaml [key=value ...]`.
See docs/GENERATE.md for the design and the dedup benchmark.
"""
