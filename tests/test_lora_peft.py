"""LoRA against PEFT as the oracle, and `tools.convert to-peft`.

A tiny GQA LLaMA (4 query heads, 2 kv heads, so the k permute differs from the q one) in fp32.
The project's LoRA model (model/lora.apply_lora on the converted base) must compute what PEFT's
LoRA computes on transformers' LlamaForCausalLM loaded from the `to-hf` export of the same base,
with the same adapter matrices. Here the adapters are mapped to PEFT by hand (names and the q/k
row order written out in this file, not taken from tools/convert_hf.py); `to-peft` must then
produce a directory `PeftModel.from_pretrained` loads to the same logits. B is random, not PEFT's
zero init, so a wrong scale, permute or name changes the logits.

`write_lora_export` stands in for the trainer: a LoRA run's final/ is the merged checkpoint
(merge_stream) plus adapter.safetensors and adapter.json, written by save_checkpoint.
"""

from __future__ import annotations

import json
import shutil

import pytest
import safetensors.torch
import torch
from hf_reference import hf_config, max_abs_diff, random_hf_llama, run_module
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from model import lora
from model.checkpoint import load_args, load_model, save_checkpoint
from model.manifest import MANIFEST_NAME, sha256_file
from tools.convert import main as convert

TOL = 1e-5
STD = 0.1  # of A and B: B A is then about half the size of the base weights
RANK, ALPHA = 8, 16.0
N_HEADS, N_KV_HEADS = 4, 2
HF_MODULE = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
TARGET_SETS = [(["wq", "wv"], False), (["all"], False), (["wk", "wo", "w2"], False), (["wq", "wk", "w1"], True)]


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(project base checkpoint, its to-hf export): a random HF LLaMA brought in with `hf`."""
    root = tmp_path_factory.mktemp("base")
    hf = random_hf_llama(hf_config(num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS))
    hf.save_pretrained(root / "hf0")
    assert convert(["hf", str(root / "hf0"), str(root / "ckpt")]) == 0
    assert convert(["to-hf", str(root / "ckpt"), str(root / "hf")]) == 0
    return root / "ckpt", root / "hf"


def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))


def lora_model(base_ckpt, targets, rslora: bool, seed: int = 0) -> torch.nn.Module:
    """The base with LoRA applied and every A and B drawn N(0, STD), so that a mistake in the
    update shows in the logits. (With N(0, 0.2), an update larger than the base weights, merged
    and unmerged differ by up to 2.4e-5 on logits of size 3 from fp32 rounding alone, PEFT's own
    merge_and_unload by 1.7e-5; at 0.1 both stay under 5e-6.)"""
    model = load_model(base_ckpt)
    lora.apply_lora(model, RANK, ALPHA, 0.0, targets, rslora)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.lora_modules(model):
            m.lora_a.weight.normal_(0.0, STD, generator=g)
            m.lora_b.weight.normal_(0.0, STD, generator=g)
    return model.eval()


def write_lora_export(model, base_ckpt, dst, targets, rslora: bool):
    """What a LoRA run's final/ holds: merged weights (Meta's names) + adapter.safetensors + adapter.json."""
    adapters = {n: t.detach().clone().float() for n, t in model.state_dict().items() if lora.is_adapter(n)}
    meta = {"rank": RANK, "alpha": ALPHA, "rslora": rslora, "dropout": 0.0,
            "targets": lora.resolve_targets(targets), "scale": lora.lora_scale(RANK, ALPHA, rslora),
            "base": {"path": str(base_ckpt), "manifest_sha256": sha256_file(base_ckpt / MANIFEST_NAME)}}
    extra = {"adapter.safetensors": lambda: safetensors.torch.save(adapters, metadata={"format": "pt"}),
             "adapter.json": lambda: (json.dumps(meta, indent=2) + "\n").encode()}
    merged = lora.merge_stream(model.state_dict().items(), lora.scales(model))
    return save_checkpoint(merged, load_args(base_ckpt), dst, extra_files=extra)


def meta_rows_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved q/k rows -> HF's half-split order, as an explicit row order (the inverse
    of hf_reference.hf_rows_to_meta: meta = hf[order])."""
    hd = w.shape[0] // n_heads
    order = [h * hd + j * (hd // 2) + i for h in range(n_heads) for i in range(hd // 2) for j in range(2)]
    out = torch.empty_like(w)
    out[order] = w
    return out


def peft_model_with(base_hf, model, targets, rslora: bool):
    """transformers + get_peft_model with the equivalent LoraConfig, our A and B copied in by hand."""
    hf = LlamaForCausalLM.from_pretrained(base_hf, dtype=torch.float32).eval()
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, use_rslora=rslora, task_type="CAUSAL_LM",
                     target_modules=[HF_MODULE[t].split(".")[1] for t in lora.resolve_targets(targets)])
    pm = get_peft_model(hf, cfg)
    copied = 0
    with torch.no_grad():
        for name, m in lora.lora_modules(model):  # layers.{i}.attention.wq
            _, i, _, t = name.split(".")
            b = m.lora_b.weight
            if t in ("wq", "wk"):
                b = meta_rows_to_hf(b, N_HEADS if t == "wq" else N_KV_HEADS)
            target = pm.get_submodule(f"base_model.model.model.layers.{i}.{HF_MODULE[t]}")
            assert target.scaling["default"] == pytest.approx(m.scale, rel=1e-12)
            target.lora_A["default"].weight.copy_(m.lora_a.weight)
            target.lora_B["default"].weight.copy_(b)
            copied += 1
    n_peft = sum(1 for n, _ in pm.named_modules() if n.endswith(".lora_A.default"))
    assert copied == n_peft == 2 * len(lora.resolve_targets(targets))
    return pm.eval()


# ------------------------------------------------------------------ the forward pass
@pytest.mark.parametrize(("targets", "rslora"), TARGET_SETS, ids=lambda v: str(v))
def test_lora_forward_equals_peft_on_the_to_hf_base(base, targets, rslora):
    base_ckpt, base_hf = base
    model = lora_model(base_ckpt, targets, rslora)
    pm = peft_model_with(base_hf, model, targets, rslora)
    x = tokens()
    with torch.no_grad():
        ours, theirs = model.logits(x), pm(x).logits
        moved = max_abs_diff(ours, load_model(base_ckpt).logits(x))
    diff = max_abs_diff(ours, theirs)
    print(f"\nPARITY LoRA {targets} rslora={rslora}: max|dlogit| = {diff:.3e} (adapters move logits by {moved:.2f})")
    assert moved > 0.1  # the adapters matter, so this comparison can fail
    assert diff <= TOL


# ------------------------------------------------------------------ to-peft
@pytest.mark.parametrize(("targets", "rslora"), [(["all"], False), (["wq", "wk", "w1"], True)], ids=lambda v: str(v))
def test_to_peft_loads_with_peft_from_pretrained_and_gives_the_same_logits(base, tmp_path, targets, rslora):
    base_ckpt, base_hf = base
    model = lora_model(base_ckpt, targets, rslora, seed=1)
    final = write_lora_export(model, base_ckpt, tmp_path / "final", targets, rslora)
    out = tmp_path / "peft"
    assert convert(["to-peft", str(final), str(out), "--base", str(base_hf)]) == 0

    cfg = json.loads((out / "adapter_config.json").read_text())
    hf_targets = [HF_MODULE[t].split(".")[1] for t in lora.resolve_targets(targets)]
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (RANK, ALPHA, rslora)
    assert cfg["target_modules"] == hf_targets and cfg["base_model_name_or_path"] == str(base_hf)
    assert cfg["bias"] == "none" and cfg["fan_in_fan_out"] is False and cfg["inference_mode"] is True
    assert not cfg["use_dora"] and cfg["modules_to_save"] is None  # vLLM refuses either
    # vLLM's parse_fine_tuned_lora_name: base_model.model.<module>.lora_{A,B}.weight, module known to it
    names = load_file(out / "adapter_model.safetensors")
    assert len(names) == 2 * 2 * len(hf_targets)
    for name in names:
        parts = name.split(".")
        assert parts[:3] == ["base_model", "model", "model"] and parts[-2:] in (["lora_A", "weight"], ["lora_B", "weight"])
        assert parts[-3] in hf_targets, name

    hf = LlamaForCausalLM.from_pretrained(base_hf, dtype=torch.float32).eval()
    pm = PeftModel.from_pretrained(hf, out).eval()
    x = tokens()
    with torch.no_grad():
        diff = max_abs_diff(model.logits(x), pm(x).logits)
    print(f"\nPARITY to-peft {targets} rslora={rslora}: max|dlogit| = {diff:.3e}")
    assert diff <= TOL


# ------------------------------------------------------------------ merged == unmerged
def test_merged_export_equals_the_lora_model_and_peft_merge_and_unload(base, tmp_path):
    base_ckpt, base_hf = base
    targets = ["all"]
    model = lora_model(base_ckpt, targets, False, seed=2)
    final = write_lora_export(model, base_ckpt, tmp_path / "final", targets, False)
    x = tokens()
    with torch.no_grad():
        diff = max_abs_diff(load_model(final).logits(x), model.logits(x))
    print(f"\nmerged final/ vs LoRA model: max|dlogit| = {diff:.3e}")
    assert diff <= TOL

    assert convert(["to-hf", str(final), str(tmp_path / "hf")]) == 0
    ours = load_file(tmp_path / "hf" / "model.safetensors")
    merged = peft_model_with(base_hf, model, targets, False).merge_and_unload()
    theirs = merged.state_dict()
    assert sorted(ours) == sorted(theirs)
    worst = max(max_abs_diff(ours[k], theirs[k]) for k in ours)
    print(f"to-hf(merged) vs PEFT merge_and_unload: max|dweight| = {worst:.3e}")
    assert worst <= TOL
    changed = [k for k in ours if not torch.equal(ours[k], load_file(base_hf / "model.safetensors")[k])]
    assert len(changed) == 2 * 7  # every adapted weight moved, nothing else did


# ------------------------------------------------------------------ bad input
def test_to_peft_on_a_full_fine_tuning_checkpoint_is_one_line_exit_2(base, tmp_path):
    base_ckpt, _ = base
    proc = run_module("tools.convert", "to-peft", str(base_ckpt), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(base_ckpt / "adapter.json") in lines[0]
    assert "nothing to export as an adapter (use to-hf for the merged model)" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def good_export(base, tmp_path_factory):
    base_ckpt, _ = base
    model = lora_model(base_ckpt, ["wq", "wv"], False, seed=4)
    return write_lora_export(model, base_ckpt, tmp_path_factory.mktemp("good") / "final", ["wq", "wv"], False)


def _broken(good_export, tmp_path, edit, keep_manifest=True):
    src = tmp_path / "src"
    shutil.copytree(good_export, src)
    if not keep_manifest:
        (src / MANIFEST_NAME).unlink()
    edit(src)
    return src


def _drop_tensor(src):
    t = load_file(src / "adapter.safetensors")
    del t["layers.1.attention.wv.lora_b.weight"]
    save_file(t, src / "adapter.safetensors")


def _extra_tensor(src):
    t = load_file(src / "adapter.safetensors")
    t["layers.0.attention.wk.lora_a.weight"] = torch.zeros(RANK, 64)  # wk was not a target
    save_file(t, src / "adapter.safetensors")


def _wrong_rank(src):
    meta = json.loads((src / "adapter.json").read_text())
    (src / "adapter.json").write_text(json.dumps({**meta, "rank": 4, "scale": ALPHA / 4}))


def _wrong_scale(src):
    meta = json.loads((src / "adapter.json").read_text())
    (src / "adapter.json").write_text(json.dumps({**meta, "scale": 1.0}))


BAD = {
    "missing adapter.safetensors": (lambda s: (s / "adapter.safetensors").unlink(), False,
                                    ["adapter.safetensors", "not found"]),
    "truncated adapter.safetensors (manifest)": (
        lambda s: (s / "adapter.safetensors").write_bytes((s / "adapter.safetensors").read_bytes()[:-9]), True,
        ["adapter.safetensors", "bytes"]),
    "flipped byte in adapter.safetensors (manifest)": (
        lambda s: (s / "adapter.safetensors").write_bytes(
            (lambda b: b[:-1] + bytes([b[-1] ^ 1]))((s / "adapter.safetensors").read_bytes())), True,
        ["adapter.safetensors", "SHA-256"]),
    "garbage adapter.safetensors": (lambda s: (s / "adapter.safetensors").write_bytes(b"\xff" * 64), False,
                                    ["adapter.safetensors", "safetensors"]),
    "edited adapter.json (manifest)": (lambda s: (s / "adapter.json").write_text("{}"), True,
                                       ["adapter.json", "manifest.json"]),
    "invalid adapter.json": (lambda s: (s / "adapter.json").write_text("{rank: 8"), False,
                             ["adapter.json", "invalid JSON"]),
    "missing tensor": (_drop_tensor, False, ["adapter.safetensors", "layers.1.attention.wv.lora_b.weight", "missing"]),
    "tensor of a module that was not a target": (_extra_tensor, False, ["layers.0.attention.wk.lora_a.weight"]),
    "rank that contradicts the tensors": (_wrong_rank, False, ["layers.0.attention.wq.lora_a.weight", "(8, 64)"]),
    "scale that contradicts rank and alpha": (_wrong_scale, False, ["adapter.json", "scale 1.0"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_missing_or_corrupt_adapter_files_are_one_line_errors(good_export, tmp_path, capsys, case):
    edit, keep_manifest, must_name = BAD[case]
    src = _broken(good_export, tmp_path, edit, keep_manifest)
    dst = tmp_path / "out"
    capsys.readouterr()
    assert convert(["to-peft", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for text in must_name:
        assert text in err[0], (text, err[0])
    assert not dst.exists() and not list(tmp_path.glob(".out.tmp-*"))
