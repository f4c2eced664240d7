"""IFEval checkers on hand-checked cases: each verdict below was worked out by hand from the
instruction's definition in Zhou et al. (2023), not taken from the code's output."""

from __future__ import annotations

import pytest

from evaluation.ifeval import CHECKERS, loose_variants, verdicts
from evaluation.ifeval import text as T
from evaluation.ifeval.spec import KwargError


def check(instruction: str, response: str, **kwargs) -> bool:
    return CHECKERS[instruction].check(response, **CHECKERS[instruction].bind(kwargs))


def test_all_25_instruction_ids_have_a_checker():
    families = {i.split(":")[0] for i in CHECKERS}
    assert len(CHECKERS) == 25
    assert families == {"keywords", "language", "length_constraints", "detectable_content", "detectable_format",
                        "combination", "startend", "change_case", "punctuation"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ('```json\n{"name": "Ada", "langs": ["en"]}\n```', True),
        ('```JSON\n[1, 2]\n```', True),
        ('{"a": 1}', True),
        ('Here is the JSON: {"a": 1}', False),
        ('```json\n{"a": 1,}\n```', False),
    ],
)
def test_json_format(response, expected):
    assert check("detectable_format:json_format", response) is expected


def test_paragraphs_separated_by_three_asterisks():
    three = "First paragraph.\n***\nSecond paragraph.\n***\nThird paragraph."
    assert check("length_constraints:number_paragraphs", three, num_paragraphs=3)
    assert not check("length_constraints:number_paragraphs", three, num_paragraphs=2)
    # A divider at the very end leaves an empty last paragraph, which is not counted.
    assert check("length_constraints:number_paragraphs", three + "\n***", num_paragraphs=3)
    # An empty paragraph between two dividers fails whatever the count.
    assert not check("length_constraints:number_paragraphs", "One.\n***\n***\nTwo.", num_paragraphs=2)


def test_nth_paragraph_first_word():
    response = "Alpha starts.\n\n\"Bravo,\" she said.\n\nCharlie ends."
    assert check("length_constraints:nth_paragraph_first_word", response, num_paragraphs=3, nth_paragraph=2, first_word="bravo")
    assert not check("length_constraints:nth_paragraph_first_word", response, num_paragraphs=2, nth_paragraph=2, first_word="bravo")
    assert not check("length_constraints:nth_paragraph_first_word", response, num_paragraphs=3, nth_paragraph=3, first_word="alpha")


def test_case_checkers():
    caps = "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG AND RUNS AWAY INTO THE FOREST."
    assert check("change_case:english_capital", caps)
    assert not check("change_case:english_capital", caps.replace("FOX", "fox"))
    assert check("change_case:english_lowercase", caps.lower())
    assert not check("change_case:english_lowercase", caps.lower().replace("fox", "Fox"))
    # Lowercase but not English.
    assert not check("change_case:english_lowercase", "le renard brun rapide saute par-dessus le chien paresseux dans la forêt.")
    # Three all-caps tokens: NASA, DON + N'T counts as two ("DON'T" is split like Treebank does).
    assert T.count_capital_words("NASA said we DON'T know. Well-Known Ok") == 3
    assert check("change_case:capital_word_frequency", "NASA and the ESA", capital_frequency=2, capital_relation="at least")
    assert not check("change_case:capital_word_frequency", "NASA and the ESA", capital_frequency=2, capital_relation="less than")


def test_punctuation_and_quotation():
    assert check("punctuation:no_comma", "No commas here. None at all!")
    assert not check("punctuation:no_comma", "One, comma.")
    assert check("startend:quotation", '  "Wrapped in double quotes."\n')
    assert not check("startend:quotation", "'single quotes'")
    assert not check("startend:quotation", '"')


def test_postscript():
    assert check("detectable_content:postscript", "Main text.\n\nP.S. See you soon.", postscript_marker="P.S.")
    assert check("detectable_content:postscript", "Main text.\np. s. lowercase with spaces", postscript_marker="P.S.")
    assert not check("detectable_content:postscript", "Main text. PS no periods", postscript_marker="P.S.")
    assert check("detectable_content:postscript", "Text.\nP.P.S one more", postscript_marker="P.P.S")


def test_keywords_and_letters():
    assert check("keywords:existence", "The Moon and the TIDE.", keywords=["moon", "tide"])
    assert not check("keywords:existence", "The Moon.", keywords=["moon", "tide"])
    # "cat" inside "concatenate" counts for frequency but is not the forbidden whole word.
    assert check("keywords:frequency", "Cat, cat, concatenate.", keyword="cat", frequency=3, relation="at least")
    assert check("keywords:forbidden_words", "We concatenate strings.", forbidden_words=["cat"])
    assert not check("keywords:forbidden_words", "A CAT sat.", forbidden_words=["cat"])
    assert check("keywords:letter_frequency", "Banana", letter="a", let_frequency=3, let_relation="at least")
    assert check("keywords:letter_frequency", "Banana", letter="A", let_frequency=4, let_relation="less than")
    assert check("keywords:letter_frequency", "Wow! Great! Yes!", letter="!", let_frequency=3, let_relation="at least")


def test_words_sentences_placeholders():
    # Don, t, stop, state, of, the, art, 3, 5, times: runs of word characters.
    assert T.count_words("Don't stop -- state-of-the-art, 3.5 times!") == 10
    assert check("length_constraints:number_words", "one two three", num_words=3, relation="at least")
    assert check("length_constraints:number_words", "one two three", num_words=4, relation="less than")
    assert T.count_sentences("Dr. Smith arrived. He sat down! Was it late?") == 3
    assert check("length_constraints:number_sentences", "One. Two. Three.", num_sentences=3, relation="at least")
    assert check("detectable_content:number_placeholders", "Dear [name], at [address] on [date].", num_placeholders=3)
    assert not check("detectable_content:number_placeholders", "Dear [name].", num_placeholders=2)


def test_format_checkers():
    bullets = "Intro\n* one\n* two\n- three\n**bold line**"
    assert check("detectable_format:number_bullet_lists", bullets, num_bullets=3)
    assert not check("detectable_format:number_bullet_lists", bullets, num_bullets=4)
    # Two *single* highlights and one **bold** one (whose inner `**` pairs are empty, so not counted).
    highlighted = "*first* and *second* and **third**"
    assert check("detectable_format:number_highlighted_sections", highlighted, num_highlights=3)
    assert not check("detectable_format:number_highlighted_sections", highlighted, num_highlights=4)
    assert not check("detectable_format:number_highlighted_sections", "** and * *", num_highlights=1)
    sections = "SECTION 1\nIntro.\nSECTION 2\nBody."
    assert check("detectable_format:multiple_sections", sections, section_spliter="SECTION", num_sections=2)
    assert not check("detectable_format:multiple_sections", sections, section_spliter="SECTION", num_sections=3)
    assert check("detectable_format:title", "<<A Poem of Joy>>\nLines.")
    assert not check("detectable_format:title", "<< >> no title")
    assert check("detectable_format:constrained_response", "Well... My answer is maybe.")
    assert not check("detectable_format:constrained_response", "My answer is perhaps.")


def test_combination_and_end():
    assert check("combination:two_responses", "Answer one.\n******\nAnswer two.")
    assert not check("combination:two_responses", "Same.\n******\nSame.")
    assert not check("combination:two_responses", "One.\n******\n******\nTwo.")
    assert check("combination:repeat_prompt", "write a poem. Here it is.", prompt_to_repeat="Write a poem.")
    assert not check("combination:repeat_prompt", "Sure! Write a poem.", prompt_to_repeat="Write a poem.")
    assert check("startend:end_checker", 'Thanks. "Any other questions?"', end_phrase="Any other questions?")
    assert not check("startend:end_checker", "Any other questions? Bye.", end_phrase="Any other questions?")


def test_language():
    assert check("language:response_language", "Dies ist ein kurzer Text auf Deutsch über das Wetter heute.", language="de")
    assert not check("language:response_language", "This is a short English text about the weather today.", language="de")
    # Nothing to detect: the benefit of the doubt.
    assert check("language:response_language", "12345 !!!", language="de")


def test_loose_variants_and_verdicts():
    response = "Sure, here you go:\n**HELLO WORLD**\nHope this helps"
    variants = loose_variants(response)
    assert len(variants) == 8
    assert "HELLO WORLD" in variants  # first and last lines removed, asterisks removed
    record = {"prompt": "p", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"], "kwargs": [{}, {}]}
    # Strict: the comma in the first line fails; loose: dropping that line passes. Quotation fails both.
    assert verdicts(record, response) == ([False, False], [True, False])
    # An empty response follows nothing, even "no comma".
    assert verdicts(record, "  ") == ([False, False], [False, False])


def test_kwargs_are_validated():
    with pytest.raises(KwargError, match="num_words"):
        CHECKERS["length_constraints:number_words"].bind({"relation": "at least"})
    with pytest.raises(KwargError, match="relation"):
        CHECKERS["length_constraints:number_words"].bind({"relation": "at most", "num_words": 3})
    with pytest.raises(KwargError, match="num_words"):
        CHECKERS["length_constraints:number_words"].bind({"relation": "at least", "num_words": True})
    # None values (the HF copy of the data pads every record's kwargs with them) are ignored.
    assert CHECKERS["punctuation:no_comma"].bind({"num_words": None}) == {}
