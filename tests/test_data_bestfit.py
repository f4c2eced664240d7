"""Best-fit packing (data/packing.py): rows traced by hand, the carry bound, split invariance and
exact resume through the sampler and loader, the config and state checks, and >= 0.98 of each
2048-token row filled on the three shared sets with the LLaMA-2 tokenizer."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_masking import CharTokenizer
from test_data_sampler import LENGTHS, _global_steps, _ids, _tiny_files

from data.alpaca import DataError
from data.collate import collate_packed, collate_padded
from data.config import DataConfig
from data.loader import AlpacaLoader
from data.packing import best_fit_decreasing, best_fit_rows, pack_rows
from data.sampler import AlpacaSampler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ["gsm8k_alpaca.json", "gpteacher_toolformer_alpaca.json", "gpteacher_roleplay_alpaca.json"]
TOK = SHARED / "llama2_tokenizer.model"
M = -100


def test_best_fit_decreasing_by_hand():
    # longest first, each into the row with the least room that still fits it:
    # 5 -> A (1 left); 4 -> B (2 left); 3 -> C (3 left); 3 -> C (0); 2 -> B (0); 1 -> A (0)
    assert best_fit_decreasing(np.array([5, 1, 4, 3, 2, 3]), 6) == [[0, 1], [2, 4], [3, 5]]
    # next-fit in arrival order needs a fourth row for the same examples
    assert pack_rows([5, 1, 4, 3, 2, 3], 6) == [[0, 1], [2], [3, 4], [5]]


def test_window_tails_carry_over_by_hand():
    lengths = [9, 10, 4, 6, 5, 5]
    # window 0 = positions 0-2 packs [1] (10/10), [0] (9/10), [2] (4/10); the last two are below
    # 0.95 and go back into window 1 (the last), which packs 9 (0), 6 (3), 5 (4), 5 (5), 4 (2):
    # [0], [3, 2], [4, 5]
    assert best_fit_rows(lengths, 10, window=3) == [[1], [0], [3, 2], [4, 5]]
    # window by window without the carry, the same stream takes a fifth row
    per_window = best_fit_decreasing(np.array(lengths[:3]), 10) + best_fit_decreasing(np.array(lengths[3:]), 10)
    assert len(per_window) == 5


def test_an_example_is_carried_at_most_once_by_hand():
    lengths = [9, 10, 4, 9, 10, 1, 5, 5, 5]
    # window 0: [1] (10) kept, [0] (9) and [2] (4) carried. Window 1 packs 0, 2 with 3-5: [4] (10),
    # [0, 5] (10), [3] (9: fresh, so carried) and [2] (4/10: carried once already, emitted as is).
    # Window 2 is the last: [3] (9), [6, 7] (10), [8] (5).
    assert best_fit_rows(lengths, 10, window=3) == [[1], [4], [0, 5], [2], [3], [6, 7], [8]]


@pytest.mark.parametrize("window", [7, 40, 1000])
def test_best_fit_rows_cover_the_stream_and_delay_an_example_by_at_most_one_window(window):
    lengths = np.random.default_rng(4).integers(1, 300, size=500)
    rows = best_fit_rows(lengths, 512, window, np.random.default_rng(0))
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert max(lengths[row].sum() for row in rows) <= 512
    # an example of window w is never emitted after a row holding an example of window w + 2
    windows = [np.asarray(row) // window for row in rows]
    latest_seen = -1
    for w in windows:
        assert w.min() >= latest_seen - 1
        latest_seen = max(latest_seen, w.max())
    assert rows == best_fit_rows(lengths, 512, window, np.random.default_rng(0))  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        best_fit_rows([513], 512, window)


def test_batches_carry_each_rows_document_lengths():
    a, b, c = ([1, 5, 6], [M, 6, 2]), ([1, 7], [M, 2]), ([1, 8, 9, 10], [M, M, 10, 2])
    assert collate_packed([a, b, c], pack_len=6, pad_id=0).doc_lens == [[3, 2], [4]]
    assert collate_padded([a, b], pad_id=0).doc_lens == [[3], [2]]


BEST = {"pack_len": 400, "pack_strategy": "best_fit", "pack_window": 20}


def test_best_fit_global_steps_hold_the_same_examples_however_they_are_split():
    reference = _global_steps(4, 1, 1, **BEST)
    assert len(reference) > 3
    assert reference != _global_steps(4, 1, 1, pack_len=400, pack_strategy="next_fit")  # it packs differently
    assert _global_steps(2, 2, 1, **BEST) == reference  # world 2 x batch 2
    assert _global_steps(2, 1, 2, **BEST) == reference  # batch 2 x accumulation 2
    assert _global_steps(1, 2, 2, **BEST) == reference


def test_best_fit_sampler_resumes_mid_epoch_on_another_split():
    a = AlpacaSampler(LENGTHS, 2, seed=7, **BEST)
    it = iter(a)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))
    rest = _ids(list(it))
    b0, b1 = (AlpacaSampler(LENGTHS, 1, rank=r, world_size=2, seed=7, **BEST) for r in (0, 1))
    for b in (b0, b1):
        b.load_state_dict(state)
    assert [x + y for x, y in zip(_ids(list(b0)), _ids(list(b1)), strict=True)] == rest
    # another packer or window is another stream: refused, not silently resumed
    for other in ({**BEST, "pack_strategy": "next_fit"}, {**BEST, "pack_window": 21}):
        with pytest.raises(ValueError, match="pack_"):
            AlpacaSampler(LENGTHS, 2, seed=7, **other).load_state_dict(state)
    # a state that does not say how it was packed is refused, whichever packer this run uses
    unsaid = {k: v for k, v in state.items() if k not in ("pack_strategy", "pack_window")}
    for strategy in ("next_fit", "best_fit"):
        with pytest.raises(ValueError, match="sampler state has pack_strategy=None, this run"):
            AlpacaSampler(LENGTHS, 2, seed=7, pack_len=400, pack_strategy=strategy).load_state_dict(unsaid)


def test_loader_packs_best_fit_by_default_and_resumes_the_exact_batches(tmp_path):
    tok = CharTokenizer()
    cfg = DataConfig(paths=_tiny_files(tmp_path), cache_dir=str(tmp_path / "c"), num_proc=1, max_len=200,
                     packing=True, pack_len=400, pack_window=8)
    assert cfg.pack_strategy == "best_fit"
    a = AlpacaLoader(cfg, tok, micro_batch_size=2, seed=1, grad_accum=2)
    steps = a.steps_per_epoch()
    assert steps >= 3
    it = iter(a)
    for _ in range(6):  # mid-epoch, at an optimizer-step boundary
        next(it)
    state = a.state_dict()
    expected = [next(it) for _ in range(2 * steps)]  # crosses into epoch 1
    assert a.epoch == 1
    for world in (1, 2):  # the same micro-batches, or world 2 x micro 1 splitting each of them
        ranks = [AlpacaLoader(cfg, tok, micro_batch_size=2 // world, rank=r, world_size=world, seed=1,
                              grad_accum=2) for r in range(world)]
        for loader in ranks:
            loader.load_state_dict(state)
        streams = [iter(loader) for loader in ranks]
        for want in expected:
            got = [next(s) for s in streams]
            tokens = np.concatenate([g.tokens.numpy() for g in got])
            assert (tokens == want.tokens.numpy()).all()
            assert sum((g.doc_lens for g in got), []) == want.doc_lens
            assert sum(g.num_targets for g in got) == want.num_targets


@pytest.mark.parametrize("cfg, message", [
    ({"pack_strategy": "first_fit"}, "data.pack_strategy: expected one of best_fit, next_fit"),
    ({"pack_window": 0}, "data.pack_window: expected a positive integer"),
])
def test_bad_packing_config_names_the_key(cfg, message):
    with pytest.raises(DataError, match=message):
        DataConfig.from_dict({"paths": ["a.json"], "packing": True, **cfg})


@pytest.fixture(scope="module")
def shared_lengths(tmp_path_factory):
    if not TOK.is_file() or not all((SHARED / s).is_file() for s in SETS):
        pytest.skip("shared data absent")
    from data.dataset import load_dataset
    from model.tokenizer import load_tokenizer

    tok, cache = load_tokenizer(TOK), str(tmp_path_factory.mktemp("cache"))
    out = {}
    for name in SETS:
        ds = load_dataset(DataConfig(paths=[str(SHARED / name)], cache_dir=cache, num_proc=2), tok)
        out[name] = np.array([len(ds[i][0]) for i in range(len(ds))])  # counted from the examples
    return out


@pytest.mark.parametrize("name", SETS)
def test_best_fit_fills_at_least_98_percent_of_each_2048_row_on_the_shared_sets(shared_lengths, name):
    lengths = shared_lengths[name]
    for epoch in range(3):
        rows = AlpacaSampler(lengths, 1, seed=0, pack_len=2048).units(epoch)  # the default: best fit
        assert sorted(np.concatenate(rows).tolist()) == list(range(len(lengths)))
        fills = np.array([lengths[row].sum() for row in rows])
        assert fills.max() <= 2048
        assert fills.sum() / (2048 * len(rows)) >= 0.98, (name, epoch)
    # next-fit in arrival order, written out here: the same stream needs more rows
    order = np.random.default_rng([0, 0]).permutation(len(lengths))
    next_fit_rows, used = 0, 2049
    for n in lengths[order]:
        if used + n > 2048:
            next_fit_rows, used = next_fit_rows + 1, 0
        used += n
    assert lengths.sum() / (2048 * next_fit_rows) < 0.97
    assert len(AlpacaSampler(lengths, 1, seed=0, pack_len=2048, pack_strategy="next_fit").units(0)) == next_fit_rows
