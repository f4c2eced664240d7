"""Heuristic filters from Alpaca, made to work for Korean as well as English.

Each filter returns a reason string (counted in the run statistics) or None. Why the Korean
variants: Korean words carry particles ("사진을" = photo + object marker), so a blacklist
matched on whole words misses every inflected use; and Alpaca's "first character must be
ASCII" rule, meant to drop garbled English, drops every Korean instruction, so it applies only
in English mode. Word counts in Korean are eojeol (space-separated units).
"""

from __future__ import annotations

import re
import string
import unicodedata

from generate.seeds import Task

# Tasks a text-only model cannot do (Alpaca's list, plus "photo"/"chart"/"sketch").
EN_BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    "chart", "sketch",
]
# Korean nouns, matched alone or followed by particles (see _KO_PARTICLES).
KO_BLACKLIST_NOUNS = [
    "이미지", "사진", "그림", "그래프", "파일", "지도", "동영상", "영상", "비디오", "오디오", "음성",
    "음악", "녹음", "순서도", "다이어그램", "도표", "차트", "스케치", "플롯",
]
# Korean verb forms of "draw" / "look at": prefixes of an eojeol. "그리" alone is not listed,
# because "그리고" (and) starts with it.
KO_BLACKLIST_PREFIXES = ["그려", "그리기", "그리세요", "그리시오", "그리십시오"]
_KO_PARTICLES = sorted([
    "은", "는", "이", "가", "을", "를", "의", "에", "에서", "에게", "께", "한테", "으로", "로", "와", "과",
    "도", "만", "까지", "부터", "처럼", "보다", "이나", "나", "이랑", "랑", "들", "이다", "입니다",
    "이에요", "예요", "인", "이라는", "라는", "이라고", "라고", "에는", "에도", "으로는", "로는", "과의",
    "와의", "에서는", "에서의", "으로부터", "로부터", "마다", "조차", "밖에", "이며", "며", "이고", "고",
], key=len, reverse=True)
EN_PROGRAM = re.compile(r"^\s*write a program\b", re.IGNORECASE)
KO_PROGRAM = re.compile(r"프로그램을\s*(작성|짜|만들|구현)")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")

# Instruction length bounds in words (eojeol for Korean): Alpaca kept 4..150 English words.
DEFAULT_BOUNDS = {"en": (4, 150), "ko": (3, 150)}


def _is_particles(rest: str) -> bool:
    """Can `rest` be split entirely into particles? (e.g. "에서는" = "에서" + "는")."""
    if not rest:
        return True
    return any(rest.startswith(p) and _is_particles(rest[len(p):]) for p in _KO_PARTICLES)


def ko_blacklisted(text: str) -> str | None:
    """The blacklisted Korean word in `text`, matched with particles attached, or None."""
    for eojeol in re.findall(r"[^\s.,!?;:\"'()\[\]]+", text):
        for noun in KO_BLACKLIST_NOUNS:
            if eojeol.startswith(noun) and _is_particles(eojeol[len(noun):]):
                return noun
        for prefix in KO_BLACKLIST_PREFIXES:
            if eojeol.startswith(prefix):
                return prefix
    return None


def en_blacklisted(text: str) -> str | None:
    for word in EN_BLACKLIST:
        if re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE):
            return word
    return None


def word_count(text: str) -> int:
    """Whitespace-separated units: English words, Korean eojeol."""
    return len(text.split())


def filter_reason(task: Task, lang: str, min_words: int | None = None, max_words: int | None = None,
                  require_hangul: bool = True) -> str | None:
    """Why `task` is rejected, or None to keep it. Both blacklists apply in both modes, since
    English words turn up in Korean instructions and vice versa."""
    inst = task.instruction.strip()
    lo, hi = DEFAULT_BOUNDS[lang]
    lo = lo if min_words is None else min_words
    hi = hi if max_words is None else max_words
    if not inst:
        return "empty_instruction"
    n = word_count(inst)
    if n < lo:
        return "too_short"
    if n > hi:
        return "too_long"
    if en_blacklisted(inst) or ko_blacklisted(inst):
        return "blacklist"
    if EN_PROGRAM.search(inst) or KO_PROGRAM.search(inst):
        return "write_a_program"
    if inst[0] in string.punctuation or unicodedata.category(inst[0]).startswith("P"):
        return "leading_punctuation"
    if lang == "en" and not inst[0].isascii():
        return "non_ascii_start"
    if lang == "ko" and require_hangul and not _HANGUL.search(inst):
        return "not_korean"
    if not task.output.strip():
        return "empty_output"
    return None
