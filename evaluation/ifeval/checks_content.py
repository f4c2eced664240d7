"""Checkers on what a response says: keywords, language, length, placeholders, postscript, commas.

Each takes the response and the instruction's kwargs and returns whether it is followed, following
the definitions of Zhou et al. (2023), Table 1, as the reference scorer implements them.
"""

from __future__ import annotations

import re

import evaluation.ifeval.text as text
from evaluation.ifeval.spec import CHAR, COUNT, RELATION, TEXT, TEXTS, Checker, compare


def keywords_existence(response: str, keywords: list[str]) -> bool:
    lowered = response.lower()
    return all(keyword.lower() in lowered for keyword in keywords)


def keywords_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    # Occurrences anywhere, case-insensitive and non-overlapping, not only as a whole word.
    found = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return compare(found, relation, frequency)


def forbidden_words(response: str, forbidden_words: list[str]) -> bool:
    return not any(
        re.search(r"\b" + re.escape(word) + r"\b", response, flags=re.IGNORECASE) for word in forbidden_words
    )


def letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    # The reference swaps a non-letter (two prompts ask for "!" and "#") for a random letter;
    # counting the character the prompt names is what the prompt asks.
    return compare(response.lower().count(letter.lower()), let_relation, let_frequency)


def response_language(response: str, language: str) -> bool:
    detected = text.detect_language(response)
    # A text with nothing to detect is given the benefit of the doubt, as in the reference.
    return detected is None or detected == language


def number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    return compare(text.count_sentences(response), relation, num_sentences)


def number_words(response: str, num_words: int, relation: str) -> bool:
    return compare(text.count_words(response), relation, num_words)


def number_paragraphs(response: str, num_paragraphs: int) -> bool:
    # Paragraphs are separated by the markdown divider ***; an empty paragraph is allowed only
    # before the first divider or after the last one.
    parts = re.split(r"\s?\*\*\*\s?", response)
    blank = [not part.strip() for part in parts]
    if any(blank[1:-1]):
        return False
    return len(parts) - blank[0] - (blank[-1] if len(parts) > 1 else 0) == num_paragraphs


def _first_word(paragraph: str) -> str:
    word = paragraph.split()[0].lstrip("'").lstrip('"')
    return re.split(r"""[.,?!'"]""", word, maxsplit=1)[0].lower()


def nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    # Paragraphs are separated by a blank line ("\n\n"); the nth is counted over the split as is,
    # so extra blank lines before it shift it (and make it empty, which fails), as in the reference.
    parts = response.split("\n\n")
    count = sum(1 for part in parts if part.strip())
    if nth_paragraph < 1 or nth_paragraph > count or not parts[nth_paragraph - 1].strip():
        return False
    return count == num_paragraphs and _first_word(parts[nth_paragraph - 1].strip()) == first_word.lower()


def number_placeholders(response: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, postscript_marker: str) -> bool:
    # The marker may appear anywhere; P.S. and P.P.S accept a space after each period ("P. S.").
    marker = postscript_marker.strip().lower()
    if marker == "p.p.s":
        pattern = r"p\.\s?p\.\s?s"
    elif marker == "p.s.":
        pattern = r"p\.\s?s\."
    else:
        pattern = re.escape(marker)
    return re.search(pattern, response.lower()) is not None


def no_comma(response: str) -> bool:
    return "," not in response


CHECKERS = {
    "keywords:existence": Checker(keywords_existence, {"keywords": TEXTS}),
    "keywords:frequency": Checker(keywords_frequency, {"keyword": TEXT, "frequency": COUNT, "relation": RELATION}),
    "keywords:forbidden_words": Checker(forbidden_words, {"forbidden_words": TEXTS}),
    "keywords:letter_frequency": Checker(
        letter_frequency, {"letter": CHAR, "let_frequency": COUNT, "let_relation": RELATION}
    ),
    "language:response_language": Checker(response_language, {"language": TEXT}),
    "length_constraints:number_sentences": Checker(
        number_sentences, {"num_sentences": COUNT, "relation": RELATION}
    ),
    "length_constraints:number_words": Checker(number_words, {"num_words": COUNT, "relation": RELATION}),
    "length_constraints:number_paragraphs": Checker(number_paragraphs, {"num_paragraphs": COUNT}),
    "length_constraints:nth_paragraph_first_word": Checker(
        nth_paragraph_first_word, {"num_paragraphs": COUNT, "nth_paragraph": COUNT, "first_word": TEXT}
    ),
    "detectable_content:number_placeholders": Checker(number_placeholders, {"num_placeholders": COUNT}),
    "detectable_content:postscript": Checker(postscript, {"postscript_marker": TEXT}),
    "punctuation:no_comma": Checker(no_comma, {}),
}
