"""Filters with hand-written expectations, English and Korean."""

from __future__ import annotations

import pytest

from generate.filters import filter_reason, ko_blacklisted, word_count
from generate.seeds import Task


def t(instruction: str, output: str = "ok") -> Task:
    return Task(instruction, "", output)


@pytest.mark.parametrize("instruction, expected", [
    ("Explain how vaccines train the immune system.", None),
    ("Summarize it.", "too_short"),  # 2 words < 4
    ("Write a haiku.", "too_short"),  # 3 words
    ("Write a haiku about rain.", None),
    ("Describe the picture of the beach at sunset.", "blacklist"),
    ("Plot the monthly sales figures for this year.", "blacklist"),
    ("Tell me how to go to the station from here.", "blacklist"),  # "go to": cannot act
    ("Explain what a graphic designer does all day.", None),  # "graphic" is not "graph"
    ("Write a program that prints the first ten primes.", "write_a_program"),
    ("\"Quote\" this sentence back to me please.", "leading_punctuation"),
    ("- List five fruits that are red.", "leading_punctuation"),
    ("Éxplain the rules of chess to a beginner.", "non_ascii_start"),
    ("다음 문장을 영어로 번역해 주세요.", "non_ascii_start"),  # Korean in English mode
    (" ".join(["word"] * 151), "too_long"),
])
def test_english_filters(instruction, expected):
    assert filter_reason(t(instruction), "en") == expected


@pytest.mark.parametrize("instruction, expected", [
    ("다음 문장을 존댓말로 바꿔 주세요.", None),  # Korean first character: kept in Korean mode
    ("한국의 사계절을 설명하세요.", None),
    ("요약하세요.", "too_short"),  # 1 eojeol < 3
    ("이 사진을 보고 설명하세요.", "blacklist"),  # 사진 + 을
    ("사진에서는 무엇이 보이나요 자세히?", "blacklist"),  # 사진 + 에서 + 는
    ("주어진 데이터로 그래프를 만드세요.", "blacklist"),  # 그래프 + 를
    ("고양이 그림 한 장을 그려 주세요.", "blacklist"),  # 그림 (alone) and 그려
    ("첨부 파일의 내용을 요약해 주세요.", "blacklist"),  # 파일 + 의
    ("사과 그리고 배의 차이를 설명하세요.", None),  # "그리고" (and) is not "draw"
    ("사진작가가 하는 일을 설명하세요.", None),  # 사진작가 (photographer): not photo + particle
    ("숫자를 정렬하는 프로그램을 작성하세요.", "write_a_program"),
    ("\"안녕\"을 다섯 나라 말로 옮기세요.", "leading_punctuation"),
    ("「봄」이라는 시를 해석해 주세요.", "leading_punctuation"),
    ("Explain the difference between weather and climate.", "not_korean"),
    ("SQL 쿼리의 실행 순서를 설명하세요.", None),  # starts with Latin letters, still Korean
])
def test_korean_filters(instruction, expected):
    assert filter_reason(t(instruction), "ko") == expected


def test_empty_output_is_rejected_in_both_languages():
    assert filter_reason(t("Explain how tides form on Earth.", output="  "), "en") == "empty_output"
    assert filter_reason(t("조수 간만의 차가 생기는 이유를 설명하세요.", output=""), "ko") == "empty_output"


def test_korean_words_are_counted_by_eojeol():
    assert word_count("다음 문장을 영어로 번역해 주세요.") == 5


def test_word_bounds_can_be_configured():
    assert filter_reason(t("Summarize it."), "en", min_words=2) is None
    assert filter_reason(t("한국의 사계절을 설명하세요."), "ko", max_words=2) == "too_long"


@pytest.mark.parametrize("text, word", [("지도를 보고 길을 찾으세요", "지도"), ("동영상으로 만들어 주세요", "동영상"),
                                        ("음악이 흐르는 카페", "음악"), ("도표입니다", "도표")])
def test_korean_blacklist_matches_with_particles(text, word):
    assert ko_blacklisted(text) == word
