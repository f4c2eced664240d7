"""Run under torchrun (2 gloo ranks): after a non-last micro-batch's backward, what does FSDP2
hold for each parameter? Prints one JSON line on rank 0 (tests/test_train_memory.py reads it).

`unsharded` counts parameters with an unsharded gradient kept for a later reduction (FSDP2's
`unsharded_accumulated_grad`, or an unsharded `.grad` on the unsharded parameter); `sharded`
counts parameters whose `.grad` is already this rank's shard; `pending_numel` the elements of
reduce-scattered gradients held back for hybrid sharding's cross-replica all-reduce."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from model.args import ModelArgs
from model.llama import Transformer
from train import parallel
from train.config import ParallelConfig
from train.distributed import init_distributed
from train.parallel import set_gradient_sync


def param_groups(model):
    for m in model.modules():
        state = getattr(m, "_get_fsdp_state", None)
        if state is not None and state()._fsdp_param_group is not None:
            yield state()._fsdp_param_group


def fsdp_params(model):
    for group in param_groups(model):
        yield from group.fsdp_params


def main(fsdp: str, shard_size: int | None) -> None:
    info = init_distributed()
    pcfg = ParallelConfig(fsdp=fsdp, shard_size=shard_size, mixed_precision="fp32")
    mesh = parallel.build_mesh(pcfg, info)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=16))
    parallel.apply_fsdp(model, mesh, pcfg)
    tokens = torch.randint(0, 64, (2, 8))
    set_gradient_sync(model, last_micro_batch=False)  # micro-batch 1 of 2
    model(tokens, tokens).backward()
    unsharded = sharded = 0
    for p in fsdp_params(model):
        held = p.unsharded_accumulated_grad is not None
        held = held or (getattr(p, "_unsharded_param", None) is not None and p._unsharded_param.grad is not None)
        unsharded += held
        grad = p.sharded_param.grad
        sharded += grad is not None and tuple(grad.to_local().shape) == tuple(p.sharded_param.to_local().shape)
    # hybrid without the cross-replica all-reduce: the reduce-scattered (sharded) sums wait here.
    pending = sum(g._partial_reduce_output.numel() for g in param_groups(model)
                  if g._partial_reduce_output is not None)
    shard_numel = sum(p.sharded_param.to_local().numel() for p in fsdp_params(model))
    if info.is_main:
        print(json.dumps({"unsharded": unsharded, "sharded": sharded, "pending_numel": pending,
                          "shard_numel": shard_numel, "full_numel": sum(p.numel() for p in model.parameters()),
                          "params": sum(1 for _ in fsdp_params(model))}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
