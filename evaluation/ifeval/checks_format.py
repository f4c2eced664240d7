"""Checkers on how a response is laid out: format, combinations, start/end, letter case.

Each takes the response and the instruction's kwargs and returns whether it is followed, following
the definitions of Zhou et al. (2023), Table 1, as the reference scorer implements them.
"""

from __future__ import annotations

import json
import re

import evaluation.ifeval.text as text
from evaluation.ifeval.spec import COUNT, RELATION, TEXT, Checker, compare

_CONSTRAINED_ANSWERS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def number_bullet_lists(response: str, num_bullets: int) -> bool:
    # A bullet is a line starting (after blanks) with "-" or with one "*" not doubled into bold.
    count = 0
    for line in response.split("\n"):
        item = line.lstrip()
        if item.startswith("-") or (item.startswith("*") and len(item) > 1 and item[1] != "*"):
            count += 1
    return count == num_bullets


def constrained_response(response: str) -> bool:
    answer = response.strip()
    return any(option in answer for option in _CONSTRAINED_ANSWERS)


def number_highlighted_sections(response: str, num_highlights: int) -> bool:
    # *text* and **text** on one line both count once (the empty `**` pairs of a bold span do not).
    single = [m for m in re.findall(r"\*[^\n*]*\*", response) if m.strip("*").strip()]
    double = [m for m in re.findall(r"\*\*[^\n*]*\*\*", response) if m[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    # A section starts with the splitter word and its number ("SECTION 2"); text before the first is not one.
    headers = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(headers) - 1 >= num_sections


def json_format(response: str) -> bool:
    body = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if body.startswith(fence):
            body = body[len(fence) :]
            break
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def two_responses(response: str) -> bool:
    # Exactly two non-empty, different answers separated by six asterisks; nothing empty in between.
    parts = response.split("******")
    if any(not part.strip() for part in parts[1:-1]):
        return False
    answers = [part.strip() for part in parts if part.strip()]
    return len(answers) == 2 and answers[0] != answers[1]


def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(response: str, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    body = response.strip()
    return len(body) > 1 and body[0] == '"' and body[-1] == '"'


def english_capital(response: str) -> bool:
    # Undetectable text is given the benefit of the doubt, as in the reference.
    return response.isupper() and text.detect_language(response) in ("en", None)


def english_lowercase(response: str) -> bool:
    return response.islower() and text.detect_language(response) in ("en", None)


def capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    return compare(text.count_capital_words(response), capital_relation, capital_frequency)


CHECKERS = {
    "detectable_format:number_bullet_lists": Checker(number_bullet_lists, {"num_bullets": COUNT}),
    "detectable_format:constrained_response": Checker(constrained_response, {}),
    "detectable_format:number_highlighted_sections": Checker(
        number_highlighted_sections, {"num_highlights": COUNT}
    ),
    "detectable_format:multiple_sections": Checker(
        multiple_sections, {"section_spliter": TEXT, "num_sections": COUNT}
    ),
    "detectable_format:json_format": Checker(json_format, {}),
    "detectable_format:title": Checker(title, {}),
    "combination:two_responses": Checker(two_responses, {}),
    "combination:repeat_prompt": Checker(repeat_prompt, {"prompt_to_repeat": TEXT}),
    "startend:end_checker": Checker(end_checker, {"end_phrase": TEXT}),
    "startend:quotation": Checker(quotation, {}),
    "change_case:english_capital": Checker(english_capital, {}),
    "change_case:english_lowercase": Checker(english_lowercase, {}),
    "change_case:capital_word_frequency": Checker(
        capital_word_frequency, {"capital_frequency": COUNT, "capital_relation": RELATION}
    ),
}
