"""tools.convert: to-hf/hf round trips, transformers loading the to-hf output, and bad input.

Bad input (missing shard, shape that contradicts params.json/config.json, unknown tensor name,
tokenizer that does not fit the vocabulary, a pickle that is not plain tensors) must give exit
status 2, exactly one stderr line naming the file and the tensor, no traceback, and no DST.
"""

from __future__ import annotations

import json
import shutil

import pytest
import sentencepiece as spm
import torch
from hf_reference import (
    hf_config,
    max_abs_diff,
    meta_state_dict,
    random_hf_llama,
    run_module,
    split_model_parallel,
    train_sentencepiece,
    write_meta_checkpoint,
)
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM

from model.checkpoint import load_model, load_state_dict
from tools.convert import main as convert

TOL = 1e-4
LLAMA2_PARAMS = dict(dim=64, n_layers=2, n_heads=8, vocab_size=256, multiple_of=16, norm_eps=1e-5)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A sentencepiece tokenizer with 400 pieces, trained here (no download)."""
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "tok.model", vocab_size=400)


@pytest.fixture(scope="module")
def project_ckpt(tmp_path_factory, spm_model):
    """A project checkpoint (GQA, Llama 3.1 rope scaling, untied) with a 400-piece tokenizer."""
    root = tmp_path_factory.mktemp("proj")
    hf = random_hf_llama(hf_config(vocab_size=400, num_attention_heads=8, num_key_value_heads=2,
                                   rope_theta=500000.0, rope_scaling=dict(
                                       rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                                       high_freq_factor=2.0, original_max_position_embeddings=16)))
    hf.save_pretrained(root / "hf")
    shutil.copy(spm_model, root / "hf" / "tokenizer.model")
    assert convert(["hf", str(root / "hf"), str(root / "ckpt")]) == 0
    return root / "ckpt"


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 40), generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_to_hf_then_hf_round_trip_is_bit_exact(project_ckpt, tmp_path, dtype):
    src = project_ckpt
    if dtype == "bfloat16":  # a bf16 project checkpoint, as training exports it
        assert convert(["to-hf", str(project_ckpt), str(tmp_path / "hf16"), "--dtype", dtype]) == 0
        assert convert(["hf", str(tmp_path / "hf16"), str(tmp_path / "src16")]) == 0
        src = tmp_path / "src16"
    assert convert(["to-hf", str(src), str(tmp_path / "hf")]) == 0
    assert convert(["hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a, b = load_state_dict(src), load_state_dict(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == getattr(torch, dtype), name
        assert torch.equal(a[name], b[name]), name
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()
    before, after = (json.loads((d / "config.json").read_text()) for d in (src, tmp_path / "back"))
    assert before == after


def test_to_hf_output_loads_in_transformers_with_the_same_logits(project_ckpt, tmp_path):
    assert convert(["to-hf", str(project_ckpt), str(tmp_path / "hf")]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["torch_dtype"] == "float32" and cfg["rope_scaling"]["rope_type"] == "llama3"
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tokens = _tokens(400)
    with torch.no_grad():
        diff = max_abs_diff(hf(tokens).logits, load_model(project_ckpt).logits(tokens))
    print(f"\nPARITY to-hf (GQA + llama3 rope): max|dlogit| = {diff:.3e}")
    assert diff <= TOL


def test_to_hf_tokenizer_loads_with_autotokenizer_and_encodes_like_sentencepiece(project_ckpt, tmp_path, spm_model):
    assert convert(["to-hf", str(project_ckpt), str(tmp_path / "hf")]) == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    for text in ["the quick brown fox, the lazy dog.", "안녕하세요 세계", "alpaca 모델 데이터 123"]:
        assert hf_tok(text).input_ids == [1] + sp.encode(text)
        assert hf_tok.decode(hf_tok(text).input_ids, skip_special_tokens=True) == text


def test_to_hf_shards_above_max_shard_size_and_ties_embeddings(tmp_path):
    hf = random_hf_llama(hf_config(num_key_value_heads=2, tie_word_embeddings=True))
    hf.save_pretrained(tmp_path / "hf")
    assert convert(["hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert convert(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--max-shard-size", "60KB"]) == 0
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((tmp_path / "out" / f).is_file() for f in files)
    assert "lm_head.weight" not in index["weight_map"]
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert max_abs_diff(reloaded(_tokens(256)).logits, hf(_tokens(256)).logits) <= TOL


def test_meta_finds_the_tokenizer_one_level_up_like_llama2_downloads(tmp_path, spm_model):
    hf = random_hf_llama(hf_config(vocab_size=400, num_attention_heads=8, num_key_value_heads=8))
    shards = split_model_parallel(meta_state_dict(hf), 2, vocab_parallel=False, head_dim=8)
    src = write_meta_checkpoint(tmp_path / "llama-2-7b", shards, {**LLAMA2_PARAMS, "vocab_size": -1})
    shutil.copy(spm_model, tmp_path / "tokenizer.model")  # Meta's layout: beside the model dirs
    assert convert(["meta", str(src), str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "tokenizer.model").read_bytes() == spm_model.read_bytes()
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["vocab_size"] == 400


def test_legacy_non_zip_pth_files_are_read_without_mmap(tmp_path):
    """torch.save(_use_new_zipfile_serialization=False) files cannot be memory-mapped: read instead."""
    hf = random_hf_llama(hf_config(num_attention_heads=8, num_key_value_heads=8))
    src = tmp_path / "meta"
    src.mkdir()
    torch.save(meta_state_dict(hf), src / "consolidated.00.pth", _use_new_zipfile_serialization=False)
    (src / "params.json").write_text(json.dumps(LLAMA2_PARAMS))
    assert convert(["meta", str(src), str(tmp_path / "ckpt")]) == 0
    tokens = _tokens(256)
    with torch.no_grad():
        assert max_abs_diff(load_model(tmp_path / "ckpt").logits(tokens), hf(tokens).logits) <= TOL


# ------------------------------------------------------------------ bad input
def _meta_src(tmp_path, n_shards=2, **param_overrides):
    hf = random_hf_llama(hf_config(num_attention_heads=8, num_key_value_heads=8))
    shards = split_model_parallel(meta_state_dict(hf), n_shards, vocab_parallel=False, head_dim=8)
    return write_meta_checkpoint(tmp_path / "meta", shards, {**LLAMA2_PARAMS, **param_overrides})


def _assert_rejected(capsys, argv, dst, *must_name):
    """In-process main(): exit 2, one stderr line naming file and tensor, DST never created."""
    capsys.readouterr()
    assert convert(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for text in must_name:
        assert text in err[0], (text, err[0])
    assert not dst.exists()
    assert not list(dst.parent.glob(f".{dst.name}.tmp-*"))  # no temp dir left behind


def test_missing_meta_shard_is_named(tmp_path, capsys):
    src = _meta_src(tmp_path, n_shards=4)
    (src / "consolidated.01.pth").unlink()  # a gap in the numbering
    _assert_rejected(capsys, ["meta", str(src), str(tmp_path / "out")], tmp_path / "out", "consolidated.01.pth")
    # the last shard missing: the merged shapes no longer fit params.json
    src2 = _meta_src(tmp_path / "b", n_shards=2)
    (src2 / "consolidated.01.pth").unlink()
    _assert_rejected(capsys, ["meta", str(src2), str(tmp_path / "out")], tmp_path / "out",
                     "consolidated.00.pth", "tensor 'tok_embeddings.weight'", "params.json")


def test_shape_that_contradicts_params_json_is_named(tmp_path, capsys):
    src = _meta_src(tmp_path, n_kv_heads=4)  # the weights have 8 kv heads
    _assert_rejected(capsys, ["meta", str(src), str(tmp_path / "out")], tmp_path / "out",
                     "consolidated.00.pth", "layers.0.attention.wk.weight", "(32, 64)")


def test_unknown_tensor_name_is_named(tmp_path, capsys):
    src = _meta_src(tmp_path)
    for i in range(2):
        shard = torch.load(src / f"consolidated.{i:02d}.pth", weights_only=True)
        shard["layers.0.attention.wq.bias"] = torch.zeros(32)
        torch.save(shard, src / f"consolidated.{i:02d}.pth")
    _assert_rejected(capsys, ["meta", str(src), str(tmp_path / "out")], tmp_path / "out",
                     "consolidated.00.pth", "layers.0.attention.wq.bias")
    # the same for an HF checkpoint (a Qwen3-style q_norm is not part of a LLaMA)
    hf = random_hf_llama(hf_config())
    hf.save_pretrained(tmp_path / "hf")
    st = load_file(tmp_path / "hf" / "model.safetensors")
    st["model.layers.1.self_attn.q_norm.weight"] = torch.ones(16)
    save_file(st, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf"), str(tmp_path / "out")], tmp_path / "out",
                     "model.safetensors", "model.layers.1.self_attn.q_norm.weight")


def test_missing_hf_shard_and_shape_mismatch_are_named(tmp_path, capsys):
    hf = random_hf_llama(hf_config())
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    shard = sorted((tmp_path / "hf").glob("model-*.safetensors"))[-1]
    shard.unlink()
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf"), str(tmp_path / "out")], tmp_path / "out", shard.name, "tensor '")
    hf.save_pretrained(tmp_path / "hf2")
    cfg = json.loads((tmp_path / "hf2" / "config.json").read_text())
    (tmp_path / "hf2" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 200}))
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf2"), str(tmp_path / "out")], tmp_path / "out",
                     "model.safetensors", "model.layers.0.mlp.", "176", "200", "config.json implies")


def test_tokenizer_that_does_not_fit_the_vocabulary_is_rejected(tmp_path, capsys, spm_model):
    src = _meta_src(tmp_path)  # vocab 256 < the tokenizer's 400 pieces
    _assert_rejected(capsys, ["meta", str(src), str(tmp_path / "out"), "--tokenizer", str(spm_model)],
                     tmp_path / "out", str(spm_model), "tok_embeddings.weight", "400", "256")
    hf = random_hf_llama(hf_config(vocab_size=1024))  # 624 rows more than the tokenizer has
    hf.save_pretrained(tmp_path / "hf")
    shutil.copy(spm_model, tmp_path / "hf" / "tokenizer.model")
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf"), str(tmp_path / "out")], tmp_path / "out",
                     "tokenizer.model", "tok_embeddings.weight", "1024")


class _NotATensor:
    pass


def test_pickles_that_are_not_plain_tensors_are_refused(tmp_path, capsys):
    """torch.load(weights_only=True): a .bin that would run arbitrary code is not loaded."""
    hf = random_hf_llama(hf_config())
    (tmp_path / "hf").mkdir()
    hf.config.save_pretrained(tmp_path / "hf")
    torch.save({"model.norm.weight": _NotATensor()}, tmp_path / "hf" / "pytorch_model.bin")
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf"), str(tmp_path / "out")], tmp_path / "out",
                     "pytorch_model.bin", "weights_only")


def test_cli_reports_one_line_and_exit_2_without_traceback(tmp_path):
    src = _meta_src(tmp_path)
    (src / "consolidated.01.pth").rename(src / "consolidated.02.pth")
    proc = run_module("tools.convert", "meta", str(src), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "consolidated.01.pth" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_not_overwritten_without_force(project_ckpt, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert convert(["to-hf", str(project_ckpt), str(dst)]) == 2
    assert (dst / "keep.txt").read_text() == "mine"
    assert convert(["to-hf", str(project_ckpt), str(dst), "--force"]) == 0
    assert (dst / "model.safetensors").is_file() and not (dst / "keep.txt").exists()


def test_corrupt_weight_files_are_one_line_errors(project_ckpt, tmp_path, capsys):
    hf = random_hf_llama(hf_config())
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage")
    _assert_rejected(capsys, ["hf", str(tmp_path / "hf"), str(tmp_path / "out")], tmp_path / "out",
                     "model.safetensors")
    broken = tmp_path / "proj"
    shutil.copytree(project_ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    _assert_rejected(capsys, ["to-hf", str(broken), str(tmp_path / "out2")], tmp_path / "out2")
