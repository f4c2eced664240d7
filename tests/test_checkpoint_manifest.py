"""manifest.json: what it records (checked against hashlib and os.stat directly), exports and
tools.convert outputs that carry one, one-line errors for truncated or altered files, and
keep-K pruning that never counts or deletes a checkpoint that does not verify."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from model import CheckpointError, ModelArgs, Transformer, load_model, save_checkpoint
from model.manifest import MANIFEST_NAME, ManifestError, verify, write_manifest


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16))
    m.init_weights()
    return m


def flip_byte(path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    (tmp_path / "sub").mkdir()
    blobs = {"a.bin": os.urandom(3000), "sub/b.bin": b"", "c.txt": b"hello\n"}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    write_manifest(tmp_path, step=7)
    body = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert body["step"] == 7
    assert body["files"] == {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in blobs.items()}
    verify(tmp_path)
    (tmp_path / "README.md").write_text("added later")  # unlisted files are not read, so not judged
    verify(tmp_path)


def test_export_names_a_truncated_or_altered_file_in_one_line(tmp_path):
    m = tiny_model()
    out = save_checkpoint(m.state_dict(), m.args, tmp_path / "c", max_shard_bytes=8 * 1024)
    assert (out / MANIFEST_NAME).is_file()
    shard = sorted(out.glob("model-*.safetensors"))[1]
    size = shard.stat().st_size

    flip_byte(shard)  # same size: only the checksum can tell
    with pytest.raises(CheckpointError, match=f"{shard.name}: SHA-256 differs") as err:
        load_model(out)
    assert "\n" not in str(err.value)
    # What the checksum buys: with it switched off the altered weights load without complaint.
    altered = load_model(out, checksums=False).state_dict()
    assert any(not torch.equal(altered[k], v) for k, v in m.state_dict().items())

    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(CheckpointError, match=f"{shard.name}: {size // 2} bytes, manifest.json says {size}"):
        load_model(out, checksums=False)  # sizes are always checked


def test_convert_to_hf_output_carries_a_manifest_that_verifies(tmp_path):
    from tools.convert import main as convert

    m = tiny_model()
    save_checkpoint(m.state_dict(), m.args, tmp_path / "ckpt")
    assert convert(["to-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    body = json.loads((tmp_path / "hf" / MANIFEST_NAME).read_text())
    on_disk = sorted(p.name for p in (tmp_path / "hf").iterdir() if p.name != MANIFEST_NAME)
    assert sorted(body["files"]) == on_disk and "model.safetensors" in on_disk
    for name, entry in body["files"].items():
        assert entry["sha256"] == hashlib.sha256((tmp_path / "hf" / name).read_bytes()).hexdigest()
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(ManifestError, match="model.safetensors: missing"):
        verify(tmp_path / "hf")


def _fake_checkpoint(root, step: int) -> None:
    d = root / f"step_{step}"
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(os.urandom(256))
    write_manifest(d, step=step)


def test_prune_counts_only_verified_checkpoints_and_keeps_corrupt_ones(tmp_path):
    from train.verify import prune, verified_checkpoints

    for step in (1, 2, 3, 4, 5):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "step_5" / "__0_0.distcp").write_bytes(b"cut")  # truncated
    (tmp_path / "step_4" / MANIFEST_NAME).unlink()  # never finished
    assert [n for n, _ in verified_checkpoints(tmp_path)] == [1, 2, 3]
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_3", "step_4", "step_5"]
    prune(tmp_path, keep=1)  # the newest verified one always stays, the corrupt ones too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4", "step_5"]
