"""Device mesh, FSDP2, activation checkpointing and compile: how the model is spread and wrapped
(the process group itself is train/distributed.py).

- `build_mesh()` makes a 2-D mesh ("replicate", "shard"). Full shard = (1, world); hybrid shard =
  (world / shard_size, shard_size): parameters are sharded inside a node (fast NVLink all-gathers)
  and replicated across nodes (only the gradient all-reduce crosses the slow network); `none` =
  (world, 1), i.e. plain data parallelism expressed with the same FSDP machinery.
- `apply_fsdp()` wraps each decoder layer, then the root, with `fully_shard`. A layer is the unit
  of all-gather: only one layer's full weights (plus prefetch) exist at a time.
"""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from train.config import ConfigError, ParallelConfig
from train.distributed import DistInfo


def build_mesh(cfg: ParallelConfig, info: DistInfo) -> DeviceMesh:
    """("replicate", "shard") mesh for the chosen sharding strategy."""
    return init_device_mesh(info.device.type, mesh_shape(cfg, info), mesh_dim_names=("replicate", "shard"))


def mesh_shape(cfg: ParallelConfig, info: DistInfo) -> tuple[int, int]:
    """(replicas, shard size): full = (1, world), none = (world, 1), hybrid = (world / shard, shard)."""
    world = info.world_size
    if cfg.fsdp == "full":
        shape = (1, world)
    elif cfg.fsdp == "none":
        shape = (world, 1)
    else:  # hybrid
        shard = cfg.shard_size or info.local_world_size
        if world % shard:
            raise ConfigError(f"parallel.shard_size={shard} does not divide the world size {world}")
        shape = (world // shard, shard)
    return shape


def mixed_precision_policy(cfg: ParallelConfig, cast_forward_inputs: bool = True) -> MixedPrecisionPolicy:
    """bf16: compute in bf16 on an fp32 master copy, reduce gradients in fp32 (a bf16 sum over
    many ranks loses the small updates fine-tuning is made of). fp32 / pure_bf16: the parameters'
    own dtype throughout (pure_bf16 casts the model itself, see `param_dtype`)."""
    if cfg.mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    cast_forward_inputs=cast_forward_inputs)
    return MixedPrecisionPolicy()


def param_dtype(cfg: ParallelConfig) -> torch.dtype:
    """dtype of the stored (master) parameters and hence of the optimizer state."""
    return torch.bfloat16 if cfg.mixed_precision == "pure_bf16" else torch.float32


def release_memory(device: torch.device) -> None:
    """Return freed tensors' memory (after dropping the training state) before a new allocation."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_memory_gb(device: torch.device) -> float | None:
    """A GPU's total memory in GB; None on a CPU (host memory is not what the planner sizes)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 1e9


def compute_dtype(cfg: ParallelConfig) -> torch.dtype:
    """dtype the forward runs in (what evaluation after training uses too)."""
    return torch.float32 if cfg.mixed_precision == "fp32" else torch.bfloat16


# Selective activation checkpointing (torchtitan's op-level policy): keep the outputs of the
# expensive ops (matmuls, attention kernels) and recompute only what is cheap to redo in backward
# (norms, RoPE, SiLU, the gate product, casts). Most of a layer's saved bytes are those cheap
# element-wise intermediates; most of its FLOPs are the matmuls, which are not redone.
_SAC_SAVE = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.higher_order.flex_attention,
}


def _sac_policy(ctx, func, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if func in _SAC_SAVE else CheckpointPolicy.PREFER_RECOMPUTE


def _sac_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_sac_policy)


def apply_activation_checkpointing(model: torch.nn.Module, cfg: ParallelConfig) -> None:
    """Recompute a layer's activations in backward instead of storing them: memory for compute.
    `full` wraps every layer; `every_n` wraps layers 0, n, 2n, ... (a middle ground); `selective`
    wraps every layer but saves matmul and attention outputs, recomputing only element-wise ops."""
    if cfg.activation_checkpointing == "none":
        return
    every = cfg.ac_every_n if cfg.activation_checkpointing == "every_n" else 1
    extra = {"context_fn": _sac_context} if cfg.activation_checkpointing == "selective" else {}
    for i, layer in enumerate(model.layers):
        if i % every == 0:
            # Non-reentrant checkpointing composes with FSDP2's hooks and with torch.compile.
            model.layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False, **extra)


def apply_compile(model: torch.nn.Module) -> None:
    """Compile each decoder layer on its own (same graph for every layer, so it compiles once).

    Called after activation checkpointing (so the checkpoint region is traced inside the compiled
    graph) and before FSDP (whose hooks stay outside it). Packed rows have one shape, so after the
    first step nothing recompiles (tests/test_train_sac_compile.py)."""
    for i, layer in enumerate(model.layers):
        model.layers[i] = torch.compile(layer)


def uses_fsdp(cfg: ParallelConfig, world_size: int) -> bool:
    """One process in fp32 (or pure bf16) has nothing to shard, gather or cast: FSDP2 would only
    copy every parameter in and out of its all-gather buffers each step and route the optimizer
    through DTensor (~10% of a small model's CPU step, measured with cProfile). bf16 mixed
    precision keeps FSDP even alone: its parameter cast is the bf16 compute path."""
    return world_size > 1 or cfg.mixed_precision == "bf16"


def apply_fsdp(model: torch.nn.Module, mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    """fully_shard each decoder layer, then the root (embeddings, final norm, output)."""
    for i in range(len(model.layers)):
        shard_layer(model, i, mesh, cfg)
    shard_root(model, mesh, cfg)


def shard_layer(model: torch.nn.Module, i: int, mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    # A layer's inputs are the hidden states (already bf16: the embedding and every layer
    # compute in bf16) and RoPE's cos/sin, which stay fp32 as in Meta's reference: no cast.
    mp = mixed_precision_policy(cfg, cast_forward_inputs=False)
    # The last layer's parameters are needed again at once by backward: keep them gathered.
    fully_shard(model.layers[i], mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(model.layers) - 1)


def shard_root(model: torch.nn.Module, mesh: DeviceMesh, cfg: ParallelConfig) -> None:
    fully_shard(model, mesh=mesh, mp_policy=mixed_precision_policy(cfg), reshard_after_forward=False)
    for method in ("logits", "prefill", "decode"):  # the model's entry points besides forward
        register_fsdp_forward_method(model, method)
    model.gradient_sync = cfg.fsdp


def set_gradient_sync(model: torch.nn.Module, last_micro_batch: bool) -> None:
    """Which gradient collectives run after this micro-batch's backward. `full`: reduce-scatter
    every micro-batch (FSDP2's default), so no unsharded gradient outlives one. `hybrid`: the same
    inside a shard group, the all-reduce across replicas (the slow link) only after the last.
    `none` (replicated): a rank's gradient is full-size either way, so accumulate and sync once."""
    mode = getattr(model, "gradient_sync", None)  # set by apply_fsdp; None: no FSDP, nothing to sync
    if mode == "none":
        model.set_requires_gradient_sync(last_micro_batch)
    elif mode == "hybrid":
        model.set_requires_all_reduce(last_micro_batch)


def check_supported(cfg: ParallelConfig, packing: bool, device: torch.device) -> None:
    """Combinations that would run, but badly, refused before the model is built."""
    from model.attention import resolve_backend

    flex = packing and resolve_backend(cfg.attention, device) == "flex"
    if flex and cfg.activation_checkpointing == "selective" and not cfg.compile:
        # Selective checkpointing saves flex attention's output only when it is traced inside a
        # compiled layer; uncompiled, the fused kernel is opaque to the policy and reruns in backward.
        raise ConfigError("parallel.activation_checkpointing=selective with flex attention needs "
                          "parallel.compile=true (or activation_checkpointing=full, or attention=dense)")


def clean_name(name: str) -> str:
    """A parameter name without the wrapper prefixes that AC and compile insert."""
    for junk in ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module."):
        name = name.replace(junk, "")
    return name
