"""ROUGE-L dedup: Hangul survives tokenization, scores equal rouge-score's, and the fast filter
makes exactly the decisions of the brute-force loop (the oracle: rouge-score on every pair)."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer, tokenize

from generate.dedup import RougeDedup
from generate.rouge import HangulTokenizer, rouge_l_f
from generate.rouge import tokenize as hangul_tokenize

ENGLISH = ["Explain how vaccines train the immune system.", "What's the capital of France? (one word)",
           "Rewrite: 'The cat sat on the mat' in the PASSIVE voice!", "List 3 uses for a paperclip, e.g. 2nd-use."]


def test_english_tokens_equal_rouge_scores_default_tokenizer():
    for text in ENGLISH:
        assert hangul_tokenize(text) == tokenize.tokenize(text, None)


def test_hangul_is_kept_while_the_default_tokenizer_drops_it():
    text = "다음 문장을 영어로 번역하세요."
    assert tokenize.tokenize(text, None) == []  # the bug: Korean tokenizes to nothing
    assert hangul_tokenize(text) == ["다음", "문장을", "영어로", "번역하세요"]
    assert hangul_tokenize("SQL 쿼리를 써 주세요") == ["sql", "쿼리를", "써", "주세요"]


def test_scores_equal_rouge_scorer_with_the_same_tokenizer():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=HangulTokenizer())
    rng = random.Random(0)
    words = "the a cat dog sat on mat 고양이가 매트 위에 앉았다 빨리 천천히 red blue".split()
    for _ in range(2000):
        a = " ".join(rng.choice(words) for _ in range(rng.randint(0, 25)))
        b = " ".join(rng.choice(words) for _ in range(rng.randint(0, 25)))
        expected = scorer.score(a, b)["rougeL"].fmeasure  # score(target, prediction)
        assert rouge_l_f(hangul_tokenize(a), hangul_tokenize(b)) == expected


def test_hand_computed_score():
    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat = 4; F = 2*4/(6+6)
    assert rouge_l_f("the cat sat on the mat".split(), "the cat lay on a mat".split()) == pytest.approx(8 / 12)


def test_identical_korean_instructions_second_is_rejected():
    with RougeDedup(threshold=0.7) as dedup:
        first = dedup.check("한국의 전통 음식 세 가지를 소개하세요.")
        assert first.accepted
        dedup.add("한국의 전통 음식 세 가지를 소개하세요.", first.tokens)
        second = dedup.check("한국의 전통 음식 세 가지를 소개하세요.")
        assert not second.accepted and second.score == 1.0 and second.match == 0
        # a different Korean instruction is kept
        assert dedup.check("서울에서 부산까지 가는 방법을 비교하세요.").accepted


def brute_force(texts: list[str], threshold: float) -> list[tuple[bool, float | None]]:
    """The oracle: rouge-score's RougeScorer against every kept text, Alpaca's rule."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=HangulTokenizer())
    kept: list[str] = []
    out = []
    for text in texts:
        scores = [scorer.score(text, k)["rougeL"].fmeasure for k in kept]
        best = max(scores, default=0.0)
        out.append((best <= threshold, best if best <= threshold else None))
        if best <= threshold:
            kept.append(text)
    return out


def workload(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ("explain summarize the a of to data model river 강 설명하세요 요약하세요 데이터를 "
             "모델의 list write short poem about city night 도시의 밤 시를").split()
    texts: list[str] = []
    for _ in range(n):
        if texts and rng.random() < 0.4:  # a near-copy of an earlier text
            toks = rng.choice(texts).split()
            toks[rng.randrange(len(toks))] = rng.choice(words)
            texts.append(" ".join(toks))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 14))))
    return texts


@pytest.mark.parametrize("workers", [0, 2])
def test_fast_decisions_equal_brute_force(workers):
    texts = workload(300, seed=workers)
    expected = brute_force(texts, 0.7)
    # parallel_min_pairs=1 sends every exact score through the persistent pool when workers > 0
    with RougeDedup(threshold=0.7, workers=workers, parallel_min_pairs=1, chunk=16) as dedup:
        got = []
        for text in texts:
            d = dedup.check(text)
            got.append((d.accepted, d.score if d.accepted else None))
            if d.accepted:
                dedup.add(text, d.tokens)
        assert dedup._pool is None or workers > 0
    assert [a for a, _ in got] == [a for a, _ in expected]
    assert sum(not a for a, _ in got) > 30  # the workload does exercise rejections
    assert got == expected  # and the best score of every kept text is exact


def test_metadata_top_k_and_average_are_exact_for_a_small_pool():
    pool = ["write a short poem about the city", "write a long poem about the sea",
            "summarize the data", "explain the model"]
    cand = "write a short story about the city"
    with RougeDedup(threshold=0.9, top_k=2, avg_sample=100) as dedup:
        for p in pool:
            dedup.add(p)
        d = dedup.check(cand)
    scores = [rouge_l_f(hangul_tokenize(cand), hangul_tokenize(p)) for p in pool]
    assert d.most_similar == [(0, scores[0]), (1, scores[1])]
    assert scores[0] == pytest.approx(2 * 6 / 14)  # LCS 6 of 7 + 7 tokens
    assert d.avg_similarity == pytest.approx(sum(scores) / 4)
