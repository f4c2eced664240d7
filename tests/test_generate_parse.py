"""Parsing numbered task lists the way models really write them (hand-written responses)."""

from __future__ import annotations

from generate.parse import parse_response
from generate.seeds import Task


def test_completion_that_continues_the_open_item():
    text = (" Summarize the article in two sentences.\n"
            "Input: The city council voted to expand the bike lanes.\n"
            "Output: The council approved more bike lanes.\n\n"
            "5. Instruction: Give three synonyms for happy.\n"
            "Input: <noinput>\n"
            "Output: joyful, cheerful, content\n")
    parsed = parse_response(text, "stop", 4)
    assert parsed.tasks == [
        Task("Summarize the article in two sentences.", "The city council voted to expand the bike lanes.",
             "The council approved more bike lanes."),
        Task("Give three synonyms for happy.", "", "joyful, cheerful, content"),
    ]
    assert not parsed.dropped


def test_truncated_last_item_is_dropped_only_when_finish_reason_is_length():
    text = ("4. Instruction: Name a prime number.\nInput: <noinput>\nOutput: 7\n\n"
            "5. Instruction: Explain why the sky is blue.\nInput: <noinput>\nOutput: Sunlight scat")
    cut = parse_response(text, "length", 4)
    assert [t.instruction for t in cut.tasks] == ["Name a prime number."]
    assert cut.dropped == {"truncated": 1}
    whole = parse_response(text, "stop", 4)
    assert [t.output for t in whole.tasks] == ["7", "Sunlight scat"]


def test_whitespace_fullwidth_colons_missing_input_and_separators():
    text = ("###\n  4.  Instruction：   Convert   10 km to miles.  \n"
            "Output：  About 6.2 miles.\n###\n"
            "5) Instruction : List two colours.\n\n   Input:   \n  Output:\n  - red\n  - blue\n")
    parsed = parse_response(text, "stop", 4)
    assert parsed.tasks == [
        Task("Convert 10 km to miles.", "", "About 6.2 miles."),
        Task("List two colours.", "", "- red\n- blue"),
    ]


def test_numbered_lines_inside_an_output_do_not_start_a_new_item():
    text = "4. Instruction: Give two tips for sleep.\nInput: <noinput>\nOutput: 1. Keep a schedule.\n2. Avoid screens.\n"
    parsed = parse_response(text, "stop", 4)
    assert parsed.tasks == [Task("Give two tips for sleep.", "", "1. Keep a schedule.\n2. Avoid screens.")]


def test_alpaca_style_numbered_field_labels():
    text = "4. Instruction: Add the numbers.\n4. Input:\n2, 3\n4. Output:\n5\n"
    assert parse_response(text, "stop", 4).tasks == [Task("Add the numbers.", "2, 3", "5")]


def test_korean_labels_and_noinput_marker():
    text = (" 다음 문장을 존댓말로 바꾸세요.\n입력: 밥 먹었어?\n출력: 식사하셨어요?\n\n"
            "5. 지시: 서울의 인구를 알려 주세요.\n입력: <입력 없음>\n출력: 약 940만 명입니다.\n")
    parsed = parse_response(text, "stop", 4)
    assert parsed.tasks == [Task("다음 문장을 존댓말로 바꾸세요.", "밥 먹었어?", "식사하셨어요?"),
                            Task("서울의 인구를 알려 주세요.", "", "약 940만 명입니다.")]


def test_item_without_instruction_text_is_counted_as_malformed():
    text = "4. Instruction:\nInput: x\nOutput: y\n5. Instruction: Say hello politely.\nOutput: Hello!\n"
    parsed = parse_response(text, "stop", 4)
    assert [t.instruction for t in parsed.tasks] == ["Say hello politely."]
    assert parsed.dropped == {"malformed": 1}
