"""Loading a QLoRA model: the base quantised to NF4 one decoder layer at a time.

The full model in bf16 never exists, on a device or on the host: rank 0 reads the checkpoint
one tensor at a time (`CheckpointReader`), each layer is allocated, filled (a broadcast per
tensor), its adapted weights quantised to NF4, and then sharded by FSDP2 (NF4Tensor implements
the chunking and all-gather hooks FSDP2 needs), before the next layer is allocated. Peak device
memory while loading is the sharded NF4 model plus one layer in the compute dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from model import lora
from train import parallel
from train.config import ParallelConfig
from train.distributed import DistInfo


class CheckpointReader:
    """The tensors of a project checkpoint, read from disk when asked for (`pop`), after its
    manifest is checked; `extra` (the fresh adapters) is served from memory."""

    def __init__(self, ckpt_dir: str, extra: dict[str, torch.Tensor]):
        from model.checkpoint import verify_dir, weight_files

        verify_dir(ckpt_dir)
        self.where = {name: f for f, names in weight_files(ckpt_dir).items() for name in names}
        self.extra = extra

    def __contains__(self, key: str) -> bool:
        return key in self.where or key in self.extra

    def pop(self, key: str) -> torch.Tensor:
        if key in self.extra:
            return self.extra.pop(key)
        from safetensors import safe_open

        with safe_open(self.where.pop(key), framework="pt") as f:
            return f.get_tensor(key)


def _fill(module: torch.nn.Module, prefix: str, full, info: DistInfo) -> None:
    """Copy `module`'s own tensors (allocated on the device, not yet filled) from rank 0's `full`."""
    for name, p in module.named_parameters():
        key = prefix + parallel.clean_name(name)
        with torch.no_grad():
            if info.is_main:
                if key not in full:
                    raise KeyError(f"{key} is not in the checkpoint")
                p.copy_(full.pop(key))
            if dist.is_initialized() and info.world_size > 1:
                dist.broadcast(p.data, src=0)


def load_quantized(model: torch.nn.Module, init_from: str, adapters: dict[str, torch.Tensor], mesh,
                   pcfg: ParallelConfig, info: DistInfo) -> None:
    """`model`: on the meta device, adapters applied. `adapters`: fresh adapters on rank 0 ({}
    elsewhere). Ends as a wrapped (checkpointed, compiled, sharded) model on `info.device`."""
    full = CheckpointReader(init_from, adapters) if info.is_main else {}
    parallel.apply_activation_checkpointing(model, pcfg)
    if pcfg.compile:
        parallel.apply_compile(model)
    shard = parallel.uses_fsdp(pcfg, mesh.size())
    for i, layer in enumerate(model.layers):
        layer.to_empty(device=info.device)
        _fill(layer, f"layers.{i}.", full, info)
        for _, m in lora.lora_modules(layer):
            lora.quantize_module(m, shards=mesh.size(1) if shard else 1)
        if shard:
            parallel.shard_layer(model, i, mesh, pcfg)
    for name, m in model.named_children():  # the root: embeddings, final norm, output
        if name != "layers":
            m.to_empty(device=info.device)
            _fill(m, f"{name}.", full, info)
    if shard:
        parallel.shard_root(model, mesh, pcfg)
