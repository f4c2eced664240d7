"""The project checkpoint format: sharded save/load, atomic writes, one-line errors."""

import json
import os

import pytest
import torch

from model import CheckpointError, ModelArgs, Transformer, load_model, save_checkpoint
from model.checkpoint import INDEX_NAME, load_state_dict


def tiny_model(**kw) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64,
                              multiple_of=16, **kw))
    m.init_weights()
    return m


def test_sharded_round_trip_is_bit_exact(tmp_path):
    m = tiny_model()
    sd = m.state_dict()
    # ~8 KB shards force several files and an index.
    out = save_checkpoint(sd, m.args, tmp_path / "ckpt", max_shard_bytes=8 * 1024)
    files = sorted(p.name for p in out.iterdir())
    index = json.loads((out / INDEX_NAME).read_text())
    n = len({v for v in index["weight_map"].values()})
    assert n > 1 and f"model-00001-of-{n:05d}.safetensors" in files
    assert set(index["weight_map"]) == set(sd)
    loaded = load_model(out)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randint(0, 64, (1, 9))
    assert torch.equal(loaded.logits(x), m.eval().logits(x))


def test_tied_checkpoint_has_no_output_tensor(tmp_path):
    m = tiny_model(tie_word_embeddings=True)
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "tied")
    assert "output.weight" not in load_state_dict(out)
    assert load_model(out).args.tie_word_embeddings


def test_load_in_bf16_casts_every_tensor(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c")
    assert {p.dtype for p in load_model(out, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


def test_missing_shard_names_the_file(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c", max_shard_bytes=8 * 1024)
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(out)


def test_shape_mismatch_names_the_tensor(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c")
    cfg = json.loads((out / "config.json").read_text())
    cfg["dim"] = 64
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "manifest.json").unlink()  # a hand-edited dir: the manifest would name config.json first
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'layers.0.attention.wk.weight' has shape \(16, 32\), config.json implies \(32, 64\)"):
        load_model(out)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c")
    before = load_state_dict(out)

    def exploding():
        yield "tok_embeddings.weight", torch.zeros(64, 32)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(exploding(), m.args, tmp_path / "c")
    after = load_state_dict(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp directory left behind


def test_load_builds_on_meta_without_a_second_copy(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c")
    loaded = load_model(out)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert not any(p.is_meta for p in loaded.parameters())
    assert os.path.isfile(out / "config.json")


def test_corrupt_weights_file_is_named(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c")
    (out / "manifest.json").unlink()  # without a manifest (HF dirs, older exports) safetensors names it
    (out / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        load_model(out)


def test_non_sentencepiece_tokenizer_is_one_clear_error(tmp_path):
    from model.tokenizer import load_tokenizer

    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match="tokenizer.model: neither a sentencepiece model nor a tiktoken BPE file"):
        load_tokenizer(bad)
