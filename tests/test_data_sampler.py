"""The sampler: sharded, split-invariant, resumable; and the loader on top of it."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_masking import CharTokenizer

from data.alpaca import DataError
from data.config import DataConfig
from data.loader import AlpacaLoader
from data.packing import pack_rows
from data.sampler import AlpacaSampler
from tools.data_stats import padding_efficiency

LENGTHS = np.random.default_rng(0).integers(5, 200, size=103)


def _ids(micro_batches):
    return [np.concatenate(mb).tolist() for mb in micro_batches]


def test_two_ranks_are_disjoint_and_cover_all_whole_steps():
    shards = [AlpacaSampler(LENGTHS, 4, rank=r, world_size=2, seed=3).micro_batches(0) for r in (0, 1)]
    seen = [sum(_ids(s), []) for s in shards]
    assert len(shards[0]) == len(shards[1]) == 12  # 103 // 8 = 12 steps of 2 x 4
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 96  # the 7-example tail that cannot fill a step is left
    exact = [AlpacaSampler(LENGTHS[:96], 4, rank=r, world_size=2).micro_batches(0) for r in (0, 1)]
    assert sorted(sum(_ids(exact[0]) + _ids(exact[1]), [])) == list(range(96))


def _global_steps(micro, world, accum, **kw):
    """The set of example ids of each optimizer step, however the step is split."""
    per_rank = [AlpacaSampler(LENGTHS, micro, r, world, seed=5, grad_accum=accum, **kw).micro_batches(1)
                for r in range(world)]
    steps = []
    for k in range(len(per_rank[0]) // accum):
        steps.append(sorted(i for mbs in per_rank for mb in mbs[k * accum:(k + 1) * accum] for i in np.concatenate(mb)))
    return steps


@pytest.mark.parametrize("kw", [{}, {"group_by_length": True, "megabatch_size": 16}, {"pack_len": 400}])
def test_a_global_step_holds_the_same_examples_however_it_is_split(kw):
    reference = _global_steps(4, 1, 1, **kw)
    assert len(reference) > 3
    assert _global_steps(2, 2, 1, **kw) == reference  # world 2 x batch 2
    assert _global_steps(2, 1, 2, **kw) == reference  # batch 2 x accumulation 2
    assert _global_steps(1, 2, 2, **kw) == reference


def test_epochs_reshuffle_and_the_same_seed_repeats():
    s = AlpacaSampler(LENGTHS, 4, seed=1)
    assert _ids(s.micro_batches(0)) == _ids(AlpacaSampler(LENGTHS, 4, seed=1).micro_batches(0))
    assert _ids(s.micro_batches(0)) != _ids(s.micro_batches(1))
    assert _ids(s.micro_batches(0)) != _ids(AlpacaSampler(LENGTHS, 4, seed=2).micro_batches(0))


def test_length_grouping_sorts_within_megabatches():
    s = AlpacaSampler(LENGTHS, 4, group_by_length=True, megabatch_size=20)
    order = np.concatenate(s.units(0))
    for start in range(0, 100, 20):
        chunk = LENGTHS[order[start:start + 20]]
        assert (np.diff(chunk) <= 0).all()
    assert sorted(order.tolist()) == list(range(103))


def test_pack_rows_is_next_fit_in_order():
    assert pack_rows([3, 2, 4, 1, 5], 6) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        pack_rows([7], 6)


def test_padding_efficiency_by_hand():
    # batches [1, 2] and [3, 4]: 10 real tokens in 2*2 + 2*4 = 12 slots
    assert padding_efficiency(np.array([1, 2, 3, 4]), np.arange(4), 2) == pytest.approx(10 / 12)


def test_restored_sampler_continues_identically():
    a = AlpacaSampler(LENGTHS, 4, seed=7)
    it = iter(a)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint round trip
    rest = _ids(list(it))
    a.set_epoch(1)
    rest += _ids(list(a))
    b = AlpacaSampler(LENGTHS, 4, seed=7)
    b.load_state_dict(state)
    resumed = _ids(list(b))
    b.set_epoch(1)
    assert resumed + _ids(list(b)) == rest
    # another split of the same global batch resumes the same stream
    c0, c1 = (AlpacaSampler(LENGTHS, 2, rank=r, world_size=2, seed=7) for r in (0, 1))
    for c in (c0, c1):
        c.load_state_dict(state)
    interleaved = [x + y for x, y in zip(_ids(list(c0)), _ids(list(c1)), strict=True)]
    assert interleaved == _ids(AlpacaSampler(LENGTHS, 4, seed=7).micro_batches(0))[5:]
    with pytest.raises(ValueError, match="seed"):
        AlpacaSampler(LENGTHS, 4, seed=8).load_state_dict(state)


def _tiny_files(tmp_path):
    paths = []
    for k in range(2):
        recs = [{"instruction": f"q{k}{i}", "output": "a" * (1 + i % 5)} for i in range(30)]
        paths.append(tmp_path / f"set{k}.json")
        paths[-1].write_text(json.dumps(recs))
    return [str(p) for p in paths]


def test_loader_resumes_the_exact_batches(tmp_path):
    tok = CharTokenizer()
    cfg = DataConfig(paths=_tiny_files(tmp_path), template="alpaca", cache_dir=str(tmp_path / "c"), num_proc=1)
    a = AlpacaLoader(cfg, tok, micro_batch_size=4, seed=1, grad_accum=2)
    assert a.steps_per_epoch() == 7 and a.micro_batches_per_epoch() == 14  # 60 // 8
    it = iter(a)
    for _ in range(10):
        next(it)
    state = a.state_dict()
    expected = [next(it) for _ in range(8)]  # crosses into epoch 1
    assert a.epoch == 1
    b = AlpacaLoader(cfg, tok, micro_batch_size=4, seed=1, grad_accum=2)
    b.load_state_dict(state)
    for want, got in zip(expected, iter(b), strict=False):
        assert got.tokens.equal(want.tokens) and got.labels.equal(want.labels)
        assert got.num_targets == want.num_targets


def test_loader_mixes_files_by_weight_and_packs(tmp_path):
    tok = CharTokenizer()
    paths = _tiny_files(tmp_path)
    cfg = DataConfig(paths=paths, weights=[2.0, 0.5], cache_dir=str(tmp_path / "c"), num_proc=1,
                     packing=True, pack_len=1024)
    loader = AlpacaLoader(cfg, tok, micro_batch_size=1)
    assert loader.stats["examples"] == 2 * 30 + 15
    batch = next(iter(loader))
    assert batch.tokens.shape[1] == 1024 and batch.positions is not None
    counts = np.bincount(loader.dataset.index, minlength=60)
    assert (counts[:30] == 2).all() and counts[30:].sum() == 15 and counts[30:].max() == 1


@pytest.mark.parametrize("packing", [False, True])
def test_one_pass_sees_every_example_once_with_equal_batches_per_rank(tmp_path, packing):
    tok = CharTokenizer()
    cfg = DataConfig(paths=_tiny_files(tmp_path), cache_dir=str(tmp_path / "c"), num_proc=1,
                     packing=packing, pack_len=1024)
    ranks = [list(AlpacaLoader(cfg, tok, micro_batch_size=4, rank=r, world_size=3).one_pass()) for r in range(3)]
    assert len({len(batches) for batches in ranks}) == 1
    seen = []
    for batches in ranks:
        for b in batches:
            for row in b.tokens.tolist():
                text = tok.decode(row)  # each of the 60 instructions "q<file><index>" is unique
                seen += [w for w in text.replace("\n", " ").split() if w.startswith("q") and w[1:].isdigit()]
    assert sorted(seen) == sorted(f"q{k}{i}" for k in range(2) for i in range(30))
    records = [r for p in cfg.paths for r in json.loads(Path(p).read_text())]
    expected_targets = sum(len(r["output"]) + 1 for r in records)  # output chars + EOS
    assert sum(b.num_targets for batches in ranks for b in batches) == expected_targets


def test_loader_refuses_a_state_saved_on_other_data(tmp_path):
    tok = CharTokenizer()
    paths = _tiny_files(tmp_path)
    cfg = DataConfig(paths=paths, cache_dir=str(tmp_path / "c"), num_proc=1)
    state = AlpacaLoader(cfg, tok, micro_batch_size=4).state_dict()
    Path(paths[0]).write_text(Path(paths[0]).read_text().replace('"q00"', '"q00 edited"'))  # same count
    edited = AlpacaLoader(cfg, tok, micro_batch_size=4)
    with pytest.raises(DataError, match="different data"):
        edited.load_state_dict(state)
    with pytest.raises(DataError, match="different data"):  # no fingerprint: nothing says it is this data
        edited.load_state_dict({k: v for k, v in edited.state_dict().items() if k != "data_fingerprint"})
    AlpacaLoader(DataConfig(paths=paths[1:], cache_dir=None), tok, 4).load_state_dict(
        AlpacaLoader(DataConfig(paths=paths[1:], cache_dir=None), tok, 4).state_dict())  # same data: fine
