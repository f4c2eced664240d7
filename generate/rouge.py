"""ROUGE-L with a tokenizer that keeps Hangul.

Why: rouge-score's default tokenizer keeps only `[a-z0-9]`, so Korean text tokenizes to nothing
and two identical Korean instructions score 0 (Alpaca's filter then keeps every duplicate). This
tokenizer keeps Hangul syllables and jamo as word characters and is otherwise the default one
(lowercase, everything else is a separator, no stemming), so English scores are unchanged and
the original Alpaca decisions are reproduced exactly on English data.

Korean tokens are eojeol (space-separated words with their particles attached), the unit Korean
text is written in; no morphological analyser is needed, which keeps the dependency list short.
"""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

# Hangul syllables (U+AC00-U+D7A3), jamo (U+1100-U+11FF), compatibility jamo (U+3130-U+318F).
_SEPARATOR = re.compile(r"[^a-z0-9\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]+")


class HangulTokenizer:
    """rouge-score tokenizer interface (`tokenize(text) -> list[str]`) that keeps Hangul."""

    def tokenize(self, text: str) -> list[str]:
        return [t for t in _SEPARATOR.split(text.lower()) if t]


TOKENIZER = HangulTokenizer()


def tokenize(text: str) -> list[str]:
    """The tokens ROUGE-L sees; computed once per instruction and reused for every comparison."""
    return TOKENIZER.tokenize(text)


def rouge_l_f(tokens_a: list[str], tokens_b: list[str]) -> float:
    """ROUGE-L F-measure via rouge-score's own LCS (the exact function Alpaca calls)."""
    return rouge_scorer._score_lcs(tokens_a, tokens_b).fmeasure


def make_scorer() -> rouge_scorer.RougeScorer:
    """A stock RougeScorer using this tokenizer, for callers that want the public API."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=TOKENIZER)
