"""Text measures the IFEval checkers share: words, sentences, capitalised words, language.

Choices, and how they relate to the reference scorer (google-research's, which lm-eval copies):

* Words are maximal runs of `\\w` characters, exactly what the reference counts with nltk's
  `RegexpTokenizer(r"\\w+")`; "don't" is two words, "state-of-the-art" four.
* Sentences come from nupunkt's Punkt model (a pure-Python reimplementation of Kiss & Strunk's
  unsupervised Punkt algorithm shipped with its own trained English parameters). The reference
  loads NLTK's `punkt/english.pickle`, which cannot be downloaded here; the two agree on ordinary
  prose and differ on some abbreviations, bare list numbers ("1.") and lines without final
  punctuation, so only `length_constraints:number_sentences` verdicts can move.
* Capitalised words are counted over a Treebank-style split (nltk's `word_tokenize` in the
  reference): whitespace, the punctuation it splits off (, ; : ? ! brackets quotes "--" "...")
  and English clitics ("DON'T" is DO + N'T, two tokens), so hyphenated words count once.
* Language detection is langdetect with a fixed seed, so a score is reproducible run to run.
"""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"\w+")
# Treebank splits these off a token; a comma or colon between digits stays (1,000 or 10:30).
_TREEBANK_SEPARATORS = re.compile(r"""\s+|\.\.\.|--|[;?!()\[\]{}<>"“”«»]|[,:](?!\d)""")
# A trailing period may follow the clitic at a sentence end ("JOHN'S."): it stays on the clitic.
_CLITIC = re.compile(r"(?i)^(.+?)((?:n't|'s|'m|'d|'ll|'re|'ve)\.*)$")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


@functools.lru_cache(maxsize=1)
def _punkt():
    import nupunkt  # imported on first use: only number_sentences needs it

    return nupunkt.load_default_model()


def split_sentences(text: str) -> list[str]:
    return [s for s in _punkt().tokenize(text) if s.strip()]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def treebank_tokens(text: str) -> list[str]:
    tokens = []
    for piece in _TREEBANK_SEPARATORS.split(text):
        if not piece:
            continue
        match = _CLITIC.match(piece)
        tokens.extend(match.groups() if match else (piece,))
    return tokens


def count_capital_words(text: str) -> int:
    return sum(1 for token in treebank_tokens(text) if token.isupper())


@functools.lru_cache(maxsize=1)
def _langdetect():
    import langdetect  # imported on first use: only the language and case checkers need it

    langdetect.DetectorFactory.seed = 0
    return langdetect


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of `text`, or None when langdetect finds no usable feature (e.g. only digits)."""
    langdetect = _langdetect()
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None
