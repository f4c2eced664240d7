"""The tokenize-once cache: reused, invalidated by what changes the arrays, written atomically,
the same whether built serially, in parallel, or by rank 0 for everyone."""

import json
import os
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
from test_data_masking import TINY, CharTokenizer

import data.cache as cache
from data.cache import load_tokenized

ARRAYS = ("seqs", "offsets", "prompt_lens", "truncated", "record_index")


def _write(tmp_path, n=40, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps([{"instruction": f"task {i}", "output": "x" * (i % 7 + 1)} for i in range(n)]))
    return str(path)


def _same(a, b):
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ARRAYS)


def test_second_load_reads_the_cache_without_tokenizing(tmp_path, monkeypatch):
    path, tok, cdir = _write(tmp_path), CharTokenizer(), str(tmp_path / "c")
    first = load_tokenized(path, tok, TINY, 64, cdir, num_proc=1)
    monkeypatch.setattr(cache, "encode_all", lambda *a, **k: pytest.fail("re-tokenized"))
    again = load_tokenized(path, tok, TINY, 64, cdir, num_proc=1)
    assert _same(first, again) and again.meta["examples"] == 40


def test_anything_that_changes_the_arrays_changes_the_key(tmp_path):
    path, tok, cdir = _write(tmp_path), CharTokenizer(), tmp_path / "c"
    load_tokenized(path, tok, TINY, 64, str(cdir), num_proc=1)
    load_tokenized(path, tok, TINY, 32, str(cdir), num_proc=1)  # max_len
    load_tokenized(path, tok, {**TINY, "prompt_no_input": "Q:{instruction} A:"}, 64, str(cdir), num_proc=1)
    Path(path).write_text(Path(path).read_text().replace("task 3", "task three"))  # data
    edited = load_tokenized(path, tok, TINY, 64, str(cdir), num_proc=1)
    assert len(list(cdir.iterdir())) == 4
    assert "task three" in tok.decode(edited.seqs[edited.offsets[3]:edited.offsets[4]])


def test_a_failed_write_leaves_no_cache_and_no_debris(tmp_path, monkeypatch):
    path, tok, cdir = _write(tmp_path), CharTokenizer(), tmp_path / "c"
    real_save, calls = np.save, []

    def failing_save(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        load_tokenized(path, tok, TINY, 64, str(cdir), num_proc=1)
    assert list(cdir.iterdir()) == []  # neither a half cache nor a temp dir
    monkeypatch.setattr(np, "save", real_save)
    assert load_tokenized(path, tok, TINY, 64, str(cdir), num_proc=1).meta["examples"] == 40


def test_parallel_build_equals_serial_build(tmp_path):
    path, tok = _write(tmp_path, n=700), CharTokenizer()
    serial = load_tokenized(path, tok, TINY, 14, None, num_proc=1)
    parallel = load_tokenized(path, tok, TINY, 14, None, num_proc=2)
    assert _same(serial, parallel)
    # BOS + "I:task N R:" is 14 ids from N = 100 on: those 600 prompts reach max_len and drop
    assert (serial.meta["dropped"], serial.meta["examples"]) == (600, 100)
    assert serial.meta["truncated"] == sum(1 + len(f"I:task {i} R:") + i % 7 + 2 > 14 for i in range(100))
    assert serial.record_index.tolist() == list(range(100))


def _rank_main(rank, rendezvous, path, cdir, out):
    import time

    import torch.distributed as dist

    os.environ.update(LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    if rank == 1:  # a non-builder must never tokenize; it waits and reads what rank 0 wrote
        cache.encode_all = lambda *a, **k: (_ for _ in ()).throw(AssertionError("rank 1 tokenized"))
    else:
        time.sleep(1.0)  # rank 1 reaches the cache first and must wait, not read a missing dir
    got = load_tokenized(path, CharTokenizer(), TINY, 64, cdir, num_proc=1)
    np.save(f"{out}.{rank}.npy", got.seqs)
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank_zero_builds_and_the_others_wait(tmp_path):
    path, cdir = _write(tmp_path), str(tmp_path / "c")
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, str(tmp_path / "pg"), path, cdir, str(tmp_path / "out"))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (np.load(tmp_path / f"out.{r}.npy") for r in (0, 1))
    assert np.array_equal(a, b) and len(list(Path(cdir).iterdir())) == 1
