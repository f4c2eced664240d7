"""Memory and time plan of a training config, per GPU, before anything is launched.

`plan(cfg, args, gpus)` counts what one rank holds at its peak, term by term, from the same
`TrainConfig` and `ModelArgs` the trainer uses (no second copy of the model arithmetic):

  params, grads, AdamW   this rank's shards (1/S of each, S = ranks in a shard group) in the
                         master dtype; `fsdp: none` keeps whole gradients (S = 1); with
                         accumulation, a micro-batch's gradient shards before they are added
  gathered layers        unsharded layer weights in the compute dtype: the layer running, the one
                         prefetched, and the last layer (kept gathered for backward), plus one
                         layer's unsharded fp32 gradient on its way to the reduce-scatter
  root                   embeddings and output weights, unsharded for the whole step (the root is
                         not resharded after forward), and their unsharded gradients
  activations            bytes per token per layer, read off what autograd saves in model/llama.py
                         (see `activation_bytes_per_token`), times the layers that keep them
                         under the checkpointing policy, plus one layer recomputed in backward
  loss                   one chunk's logits in backward: log-softmax, its gradient and the logits'
                         gradient (model/loss.py)
  slack                  allocator fragmentation and workspaces: 10% of the above, plus the
                         accelerator's context that max_memory_allocated never shows (1.5 GB)

With a `lora:` section the state terms are the frozen base's and the adapters' instead, plus the
NF4 dequantisation working set, and the activations drop what only weight gradients need and add
the adapters' inputs: train/plan_lora.py.

The activation term follows the autograd graph of this model as written: RMSNorm saves its fp32
input copy and its normalised output; RoPE saves fp32 q and k; attention (flash / efficient /
flex kernels) saves q, k, v, the output and a logsumexp, never the T x T scores; SwiGLU saves
w1's and w3's outputs, silu's output and their product. docs/MEMORY.md compares the total with
measured peaks.

Host memory, beside the device total (`Plan.host_terms`, not in `total`):

  checkpoint_staging     asynchronous periodic saves (checkpoint.async_save, on by default with
                         CUDA) copy this rank's params + AdamW shards to (pinned) host memory,
                         kept between saves for reuse (train/checkpoint_async.py)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from model.args import ModelArgs
from model.loss import chunk_tokens
from train.config import TrainConfig
from train.metrics import model_flops
from train.parallel import uses_fsdp
from train.plan_lora import lora_activation_bytes_per_token, lora_fix, lora_staged_bytes, lora_state_terms

GB = 1e9
GPUS = {"a100-40": 40.0, "a100": 80.0, "a100-80": 80.0, "h100": 80.0, "h200": 141.0}
PEAK_TFLOPS = {"a100-40": 312.0, "a100": 312.0, "a100-80": 312.0, "h100": 989.0, "h200": 989.0}
CONTEXT_GB = 1.5  # CUDA context + NCCL buffers: outside max_memory_allocated, inside the GPU
SLACK = 0.10


def _bytes(mixed_precision: str) -> tuple[int, int]:
    """(master/optimizer bytes, compute bytes) per element."""
    return {"bf16": (4, 2), "fp32": (4, 4), "pure_bf16": (2, 2)}[mixed_precision]


def activation_bytes_per_token(args: ModelArgs, c: int) -> float:
    """What one decoder layer keeps for backward per token, in bytes, compute dtype of c bytes.

    norms (x2): fp32 input copy 4D + normalised c*D + scaled output c*D
    rope:       fp32 q and k, 4D + 4*Dkv
    attention:  q, k, v, output: c*(2D + 2*Dkv); wo's input: c*D
    SwiGLU:     w1 out, silu out, w3 out, product: 4*c*H
    """
    D, H = args.dim, args.hidden_dim
    Dkv = args.n_kv_heads * args.head_dim
    return 2 * (4 * D + 2 * c * D) + (4 * D + 4 * Dkv) + c * (2 * D + 2 * Dkv) + c * D + 4 * c * H


def selective_bytes_per_token(args: ModelArgs, c: int) -> float:
    """Selective checkpointing keeps matmul and attention outputs (element-wise ops are
    recomputed): q, k, v, attention output, wo out, w1, w3 and w2 outputs, plus the layer input."""
    D, H = args.dim, args.hidden_dim
    Dkv = args.n_kv_heads * args.head_dim
    return c * (D + D + 2 * Dkv + D + D + 2 * H + D)


@dataclass
class Plan:
    gpus: int
    shard: int  # ranks a parameter is sharded over
    tokens: int  # tokens per micro-batch per rank
    terms: dict[str, float] = field(default_factory=dict)  # bytes
    host_terms: dict[str, float] = field(default_factory=dict)  # bytes of host memory per rank, not in total
    flops_per_step: float = 0.0  # model FLOPs of one optimizer step, all ranks

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def fits(self, gpu_mem_gb: float) -> bool:
        return self.total <= gpu_mem_gb * GB


def shard_size(cfg: TrainConfig, gpus: int) -> int:
    p = cfg.parallel
    if p.fsdp == "full":
        return gpus
    if p.fsdp == "none":
        return 1
    shard = p.shard_size or min(gpus, 8)
    if gpus % shard:
        raise ValueError(f"parallel.shard_size={shard} does not divide {gpus} GPUs")
    return shard


def tokens_per_micro_batch(cfg: TrainConfig) -> int:
    """Row length x rows: packed rows are pack_len; padded rows are at most max_len - 1."""
    row = cfg.data.pack_len if cfg.data.packing else cfg.data.max_len - 1
    return cfg.batch.micro_batch_size * row


def plan(cfg: TrainConfig, args: ModelArgs, gpus: int, context_gb: float = CONTEXT_GB) -> Plan:
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    pcfg = cfg.parallel
    m, c = _bytes(pcfg.mixed_precision)
    S = shard_size(cfg, gpus)
    P = args.num_params()
    L = args.n_layers
    D, V = args.dim, args.vocab_size
    root = V * D * (1 if args.tie_word_embeddings else 2) + 2 * D  # embeddings, output, final norm
    layer = (P - root) / L
    T = tokens_per_micro_batch(cfg)
    out = Plan(gpus=gpus, shard=S, tokens=T)
    t = out.terms
    t["params"] = P / S * m
    t["grads"] = P / S * m if pcfg.fsdp != "none" else P * m
    t["adamw"] = 2 * P / S * m
    if cfg.batch.grad_accum > 1 and pcfg.fsdp != "none" and uses_fsdp(pcfg, gpus):
        # From the second micro-batch on, each freshly reduced gradient shard exists beside the
        # accumulated one until it is added in.
        t["grads_in_flight"] = P / S * m
    if uses_fsdp(pcfg, gpus):  # FSDP's unsharded copies (one fp32 process trains without FSDP)
        t["gathered_layers"] = 3 * layer * c + layer * 4
        t["root_unsharded"] = root * c + root * 4
    else:
        t["gathered_layers"] = t["root_unsharded"] = 0.0
    if cfg.lora is not None:  # frozen base, trainable adapters (train/plan_lora.py)
        t.pop("grads_in_flight", None)
        t.update(lora_state_terms(cfg, args, S, c, uses_fsdp(pcfg, gpus)))

    full = activation_bytes_per_token(args, c)
    if cfg.lora is not None:
        full = lora_activation_bytes_per_token(args, c, cfg.lora, full)
    policy = pcfg.activation_checkpointing
    if policy == "none":
        kept = L * full
    elif policy == "full":
        kept = L * c * D + full  # each layer's input, plus one layer recomputed in backward
    elif policy == "every_n":
        ck = math.ceil(L / pcfg.ac_every_n)
        kept = ck * c * D + (L - ck) * full + full
    else:  # selective
        kept = L * selective_bytes_per_token(args, c) + full
    # Embedding output, the final norm's saved tensors, and the backward's working gradients
    # (two residual-stream-sized fp32 tensors and the widest intermediate).
    kept += c * D + (4 * D + 2 * c * D) + 2 * 4 * D + 2 * c * args.hidden_dim
    t["activations"] = T * kept
    # Backward of one chunk: log-softmax output, its gradient and the logits' gradient in fp32,
    # plus the compute-dtype logits and gradient when the compute dtype is narrower.
    t["loss"] = min(T, chunk_tokens(V)) * V * (12 + (2 * c if c < 4 else 0))
    t["slack"] = SLACK * sum(t.values())
    t["context"] = context_gb * GB
    # The plan sizes GPUs, where async_save=auto is on; the staged copy is this rank's state shards.
    if cfg.checkpoint.every > 0 and cfg.checkpoint.async_save is not False:
        out.host_terms["checkpoint_staging"] = t["params"] + t["adamw"]
        if cfg.lora is not None:  # a LoRA checkpoint holds the adapters and their AdamW state only
            out.host_terms["checkpoint_staging"] = lora_staged_bytes(cfg, args, S)
    # train.metrics' model FLOPs, every token in a document of the longest length (an upper bound).
    step_tokens = T * cfg.batch.grad_accum * gpus
    out.flops_per_step = model_flops(args, step_tokens, step_tokens * (cfg.data.max_len - 1))
    return out


def smallest_fix(cfg: TrainConfig, args: ModelArgs, gpus: int, gpu_mem_gb: float,
                 context_gb: float = CONTEXT_GB) -> str | None:
    """The first change, in order of how little it costs, that makes the plan fit; None if none."""
    import copy

    def fits_with(mutate, g=gpus) -> bool:
        c2 = copy.deepcopy(cfg)
        mutate(c2)
        try:
            return plan(c2, args, g, context_gb).fits(gpu_mem_gb)
        except ValueError:
            return False

    p = cfg.parallel
    if p.activation_checkpointing in ("none", "every_n"):
        if fits_with(lambda c: setattr(c.parallel, "activation_checkpointing", "selective")):
            return "parallel.activation_checkpointing=selective"
        if fits_with(lambda c: setattr(c.parallel, "activation_checkpointing", "full")):
            return "parallel.activation_checkpointing=full"
    mb = cfg.batch.micro_batch_size
    while mb > 1:
        mb //= 2
        if fits_with(lambda c, mb=mb: setattr(c.batch, "micro_batch_size", mb)):
            accum = cfg.batch.grad_accum * cfg.batch.micro_batch_size // mb
            return f"batch.micro_batch_size={mb} batch.grad_accum={accum} (same global batch)"
    if cfg.lora is not None and (fix := lora_fix(cfg, fits_with)):
        return fix
    if p.fsdp != "full" and fits_with(lambda c: setattr(c.parallel, "fsdp", "full")):
        return "parallel.fsdp=full"
    for g in (gpus * 2, gpus * 4, gpus * 8):
        if fits_with(lambda c: None, g):
            return f"{g} GPUs (batch.grad_accum scaled down to keep the global batch)"
    return None


def check_fits(cfg: TrainConfig, args: ModelArgs, world: int, device_memory_gb: float | None) -> str | None:
    """The training start's check: None when the plan fits (or nothing to check against), else
    one line saying so, with the smallest change that fits and the override."""
    if cfg.parallel.memory_check == "off" or device_memory_gb is None:
        return None
    try:
        p = plan(cfg, args, world)
    except ValueError:  # an impossible layout: build_mesh names it
        return None
    if p.fits(device_memory_gb):
        return None
    fix = smallest_fix(cfg, args, world, device_memory_gb)
    return (f"the plan needs {p.total / GB:.1f} GB per device, {device_memory_gb:.1f} GB available "
            f"(python -m tools.plan --config ... for the terms); "
            f"{'try ' + fix if fix else 'no single change fits'}; parallel.memory_check=warn starts anyway")
