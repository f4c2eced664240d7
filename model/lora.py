"""LoRA (Hu et al. 2021) and QLoRA (Dettmers et al. 2023) as a transformation of the model.

`apply_lora(model, ...)` swaps each targeted nn.Linear (Meta's names: wq wk wv wo w1 w2 w3) for a
`LoRALinear` that keeps the frozen weight under the same name (`layers.0.attention.wq.weight`, so
base checkpoints load unchanged) and adds two small trainable matrices:

    y = x W^T + scale * dropout(x) A^T B^T        A: (r, in), B: (out, r), scale = alpha / r

A starts Kaiming-uniform and B at zero, as PEFT does, so step 0 computes exactly the base model.
With `quantize_base`, the frozen weight is an NF4 tensor with double-quantised scales (torchao's
NF4Tensor, imported only then) and is dequantised to the compute dtype inside each matmul.

Everything else (the loop, train_step, FSDP per layer, checkpointing, compile) is unchanged: the
optimizer simply sees only the parameters that require gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
_PARENT = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
           "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}
ADAPTER_KEYS = ("lora_a.", "lora_b.")
# Hugging Face's names for the same projections (PEFT's target_modules for LlamaForCausalLM).
HF_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
            "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def resolve_targets(names: Iterable[str]) -> list[str]:
    names = list(names)
    return list(TARGETS) if "all" in names else [t for t in TARGETS if t in names]


def lora_scale(rank: int, alpha: float, rslora: bool) -> float:
    """alpha / r (PEFT's default), or alpha / sqrt(r) (rsLoRA: keeps updates from shrinking with r)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def is_nf4(t: torch.Tensor) -> bool:
    return type(t).__name__ == "NF4Tensor"


def dequantize(t: torch.Tensor) -> torch.Tensor:
    """The weight as a plain tensor: NF4 is unpacked to its original dtype, others pass through."""
    return t.get_original_weight() if is_nf4(t) else t


class LoRALinear(nn.Module):
    """A frozen linear map plus a trainable low-rank update (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, rslora: bool = False):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = nn.Parameter(base.weight.detach(), requires_grad=False)  # (out, in), frozen
        device = base.weight.device
        self.lora_a = nn.Linear(self.in_features, rank, bias=False, device=device)
        self.lora_b = nn.Linear(rank, self.out_features, bias=False, device=device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.rank, self.scale = rank, lora_scale(rank, alpha, rslora)
        self.reset_adapter()  # B = 0: until trained, the module computes exactly the base map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_nf4(self.weight):
            base = _nf4().linear_nf4(input=x, weight=self.weight)
        else:
            base = F.linear(x, self.weight)
        # The adapters may be kept in another dtype than the base (fp32 next to a bf16 base when
        # no FSDP policy casts them for the forward): compute in theirs, add in the base's.
        a, b = self.lora_a.weight, self.lora_b.weight
        delta = F.linear(F.linear(self.dropout(x).to(a.dtype), a), b) * self.scale
        return base + delta.to(base.dtype)

    @torch.no_grad()
    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """PEFT's init: A Kaiming-uniform (a = sqrt(5), nn.Linear's own), B zeros."""
        _init_a(self.lora_a.weight, generator)
        nn.init.zeros_(self.lora_b.weight)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}"


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0, targets: Iterable[str] = ("all",),
               rslora: bool = False) -> list[str]:
    """Swap the targeted linears of every decoder layer for LoRALinear (on any device, meta too)
    and freeze everything else. Returns the adapted modules' names, e.g. `layers.0.attention.wq`."""
    names = []
    for i, layer in enumerate(model.layers):
        for t in resolve_targets(targets):
            parent = getattr(layer, _PARENT[t])
            setattr(parent, t, LoRALinear(getattr(parent, t), rank, alpha, dropout, rslora))
            names.append(f"layers.{i}.{_PARENT[t]}.{t}")
    for name, p in model.named_parameters():
        p.requires_grad = is_adapter(name)
    return names


def is_adapter(name: str) -> bool:
    return any(k in name for k in ADAPTER_KEYS)


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def initial_adapters(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Freshly initialised adapter tensors, full size on the host, drawn from `seed` in module
    order, so the same seed gives the same adapters for any world size or device."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in lora_modules(model):
        out[f"{name}.lora_a.weight"] = _init_a(torch.empty(m.rank, m.in_features), gen)
        out[f"{name}.lora_b.weight"] = torch.zeros(m.out_features, m.rank)
    return out


@torch.no_grad()
def _init_a(a: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)


def scales(model: nn.Module, clean=lambda n: n) -> dict[str, float]:
    """Each adapted module's name (cleaned of wrapper prefixes by `clean`) -> its scale."""
    return {clean(name): m.scale for name, m in lora_modules(model)}


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B A, computed in fp32 (an NF4 weight dequantised first), returned in fp32."""
    return dequantize(weight).float() + scale * (b.float() @ a.float())


def merge_stream(items: Iterable[tuple[str, torch.Tensor]], module_scales: dict[str, float]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """A model's (name, tensor) stream with adapters folded into their weights: the plain
    LLaMA state dict (Meta's names) that every other tool reads. Merged weights come out fp32
    (the caller casts the whole stream to the export dtype). Holds at most one module's
    three tensors at a time (the state dict lists weight, lora_a, lora_b together)."""
    held: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in items:
        module, _, leaf = name.rpartition(".")
        owner = module.rpartition(".")[0] if module.endswith(("lora_a", "lora_b")) else module
        if owner not in module_scales:
            yield name, dequantize(t)
            continue
        parts = held.setdefault(owner, {})
        parts[module.rpartition(".")[2] if owner != module else leaf] = t
        if len(parts) == 3:
            del held[owner]
            yield f"{owner}.weight", merged_weight(parts["weight"], parts["lora_a"], parts["lora_b"],
                                                   module_scales[owner])
    if held:
        raise ValueError(f"adapters without their weights: {sorted(held)}")


def quantize_base(model: nn.Module) -> None:
    """QLoRA: every adapted module's frozen weight -> NF4 (64-value blocks, double-quantised
    scales). Called module by module while loading, so only one bf16 weight exists at a time."""
    for _, m in lora_modules(model):
        quantize_module(m)


NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256  # QLoRA's: 64 weights share a scale, 256 scales share an fp32 scale


def quantize_module(m: LoRALinear, shards: int = 1) -> None:
    """`shards`: FSDP will split the NF4 tensor this many ways, which needs a whole number of
    scale blocks per shard."""
    if is_nf4(m.weight):
        return
    w = m.weight.detach()
    if w.numel() % NF4_BLOCK:
        raise ValueError(f"NF4 needs a multiple of {NF4_BLOCK} weights per matrix, got {tuple(w.shape)}")
    # QLoRA's 256 scales per block everywhere it fits (every LLaMA from 7B up); small test models
    # get the largest power-of-two block that divides their scales evenly between the shards.
    n_scales, scaler_block = w.numel() // NF4_BLOCK, NF4_SCALER_BLOCK
    while scaler_block > 1 and (n_scales % scaler_block or (n_scales // scaler_block) % shards):
        scaler_block //= 2
    m.weight = nn.Parameter(_nf4().to_nf4(w, NF4_BLOCK, scaler_block), requires_grad=False)


def _nf4():
    """torchao's NF4 module, imported only when a base is quantised."""
    import logging

    # torchao's CPU wheel logs that its CUDA kernels cannot load; NF4 does not use them.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor
    except ImportError as e:
        raise RuntimeError(f"lora.quantize_base=nf4 needs torchao (pip install torchao==0.18.0): {e}") from None
    return nf4_tensor


@torch.no_grad()
def merge_into_plain(model: nn.Module) -> None:
    """In place: each LoRALinear back to an nn.Linear holding the merged weight (for evaluation
    and tests; the export streams `merge_stream` instead)."""
    for name, m in list(lora_modules(model)):
        parent = model.get_submodule(name.rpartition(".")[0])
        w = merged_weight(m.weight, m.lora_a.weight, m.lora_b.weight, m.scale)
        lin = nn.Linear(m.in_features, m.out_features, bias=False, device=w.device,
                        dtype=dequantize(m.weight).dtype)
        lin.weight.copy_(w)
        setattr(parent, name.rpartition(".")[2], lin)


def kept_adapters(items: Iterable[tuple[str, torch.Tensor]], into: dict[str, torch.Tensor]
                  ) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass a state-dict stream through, keeping an fp32 copy of each adapter tensor in `into`."""
    for name, t in items:
        if is_adapter(name):
            into[name] = t.detach().float().clone()
        yield name, t


ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter.json"


def adapter_files(adapters: dict[str, torch.Tensor], info: dict) -> dict:
    """`extra_files` for model.checkpoint.save_checkpoint: the adapters (project names, fp32) and
    what they were trained with (rank, alpha, scale, targets, and the base they belong to)."""
    import json

    from safetensors.torch import save

    return {ADAPTER_WEIGHTS: lambda: save({k: v.contiguous() for k, v in adapters.items()}),
            ADAPTER_CONFIG: lambda: (json.dumps(info, indent=2) + "\n").encode()}
