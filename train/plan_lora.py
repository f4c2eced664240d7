"""The LoRA / QLoRA terms of the memory plan (train/plan.py calls these when `cfg.lora` is set).

With adapters (model/lora.py) the base is frozen and only A (r x in) and B (out x r) of each
adapted linear train, so the terms of full fine-tuning change like this (per GPU, S = shard size):

  params           frozen base in the compute dtype (bf16 under mixed_precision=bf16, fp32 under
                   fp32); with quantize_base=nf4 the adapted linears' weights are NF4 instead
                   (`nf4_bytes`: 4-bit codes, an int8 scale per 64 weights, one scale per 256
                   scales in the original dtype), all sharded 1/S; plus fp32 adapter masters
  grads, adamw     adapters only (4 and 2 x 4 bytes per adapter parameter): a frozen weight has
                   neither gradient nor optimizer state
  gathered_layers  three gathered layers as stored (bf16 or NF4 base, adapters cast to the compute
                   dtype) plus one layer's unsharded fp32 adapter gradients
  root_unsharded   embeddings and output gathered in the compute dtype, no gradient
  nf4_dequant      torchao dequantises an NF4 weight for every matmul (forward and backward):
                   `NF4Tensor.get_original_weight` unpacks the two 4-bit codes of each byte to
                   int64 (8 bytes per weight), looks both halves up, scales them and stacks them:
                   8 + 3 x o bytes per weight of the largest adapted matrix, alive together
  activations      `lora_activation_bytes_per_token`
  host staging     an asynchronous checkpoint copies the adapters and their AdamW state only

Why activations do not shrink much: the gradient must still reach the adapters of the first
layers, so backward runs through every frozen layer and the norms, RoPE, attention and SwiGLU
keep what they keep for full fine-tuning. What a frozen base does not save (checked with
saved_tensors_hooks on model/llama.py): a frozen linear saves only its weight, not its input,
and a frozen RMSNorm weight needs no normalised copy; the adapters add their own inputs.
"""

from __future__ import annotations

from model.args import ModelArgs
from model.lora import NF4_BLOCK, NF4_SCALER_BLOCK, resolve_targets


def nf4_bytes(numel: int, orig_bytes: int = 2, shards: int = 1) -> int:
    """Bytes of one torchao NF4Tensor of `numel` weights quantised from a dtype of `orig_bytes`:

    quantized_data       numel / 2 (two 4-bit codes per uint8)
    quantized_scalers    numel / 64 (an int8 absmax scale per 64-weight block)
    quantization_factor  (numel / 64 / sb) x orig_bytes (one per block of sb scales; sb = 256,
                         or for small test matrices the largest power of two that splits the
                         scales evenly into blocks and the blocks evenly between `shards`, as
                         model/lora.quantize_module picks)
    scaler_mean          orig_bytes (one scalar)
    nf4                  16 x orig_bytes (the code book, one copy per tensor)
    """
    if numel % NF4_BLOCK:
        raise ValueError(f"NF4 needs a multiple of {NF4_BLOCK} weights, got {numel}")
    scales, sb = numel // NF4_BLOCK, NF4_SCALER_BLOCK
    while sb > 1 and (scales % sb or (scales // sb) % shards):
        sb //= 2
    return numel // 2 + scales + (scales // sb) * orig_bytes + orig_bytes + 16 * orig_bytes


def linear_shapes(args: ModelArgs) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear of a decoder layer, Meta's names."""
    D, H = args.dim, args.hidden_dim
    Dq, Dkv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    return {"wq": (Dq, D), "wk": (Dkv, D), "wv": (Dkv, D), "wo": (D, Dq), "w1": (H, D), "w2": (D, H), "w3": (H, D)}


def targets(lora) -> list[str]:
    return resolve_targets(lora.targets)


def adapter_params_per_layer(args: ModelArgs, lora) -> int:
    """r x (in + out) for each adapted linear: A is (r, in), B is (out, r)."""
    shapes = linear_shapes(args)
    return sum(lora.rank * (shapes[t][0] + shapes[t][1]) for t in targets(lora))


def adapter_params(args: ModelArgs, lora) -> int:
    return args.n_layers * adapter_params_per_layer(args, lora)


def frozen_layer_bytes(args: ModelArgs, lora, c: int, shards: int = 1) -> float:
    """One decoder layer's frozen weights as stored: adapted linears in NF4 (quantize_base=nf4,
    quantised from the compute dtype) or the compute dtype; other linears and norms in c bytes."""
    shapes = linear_shapes(args)
    adapted = set(targets(lora))
    out = 2 * args.dim * c  # the two RMSNorm weights
    for name, (o, i) in shapes.items():
        nf4 = lora.quantize_base == "nf4" and name in adapted
        out += nf4_bytes(o * i, c, shards) if nf4 else o * i * c
    return out


def adapter_bytes_per_token(args: ModelArgs, lora, c: int) -> float:
    """What the adapters of one layer save for backward, per token: A's input and B's input (r).

    A's input is dropout(x): with dropout each adapter keeps its own copy (c bytes) and a bool
    mask (1 byte) per input feature; without, A saves x itself, one copy per distinct input
    (wq, wk, wv share the attention norm's output, w1 and w3 the FFN norm's; wo and w2 have
    their own). B saves A x: r values per token per adapted module."""
    shapes = linear_shapes(args)
    ts = targets(lora)
    per = len(ts) * lora.rank * c
    if lora.dropout > 0:
        return per + sum(shapes[t][1] * (c + 1) for t in ts)
    groups = {"wq": "attn_in", "wk": "attn_in", "wv": "attn_in", "wo": "wo", "w1": "ffn_in", "w3": "ffn_in", "w2": "w2"}
    widths = {groups[t]: shapes[t][1] for t in ts}
    return per + c * sum(widths.values())


def lora_activation_bytes_per_token(args: ModelArgs, c: int, lora, full: float) -> float:
    """One layer's saved bytes per token with a frozen base: full fine-tuning's `full` (see
    train.plan.activation_bytes_per_token) less what only a weight's gradient needs, plus the
    adapters' own. Not saved when frozen: each norm's normalised and scaled outputs (2 x 2cD;
    the scaled output was the next linear's saved input), wo's input (cD) and w2's input, the
    SwiGLU product (cH). A frozen linear saves only its weight (a parameter, counted already)."""
    D, H = args.dim, args.hidden_dim
    return full - 2 * 2 * c * D - c * D - c * H + adapter_bytes_per_token(args, lora, c)


def lora_state_terms(cfg, args: ModelArgs, S: int, c: int, fsdp: bool) -> dict[str, float]:
    """The terms that replace full fine-tuning's params, grads, adamw, grads_in_flight,
    gathered_layers and root_unsharded, plus nf4_dequant; bytes per GPU."""
    lora, L = cfg.lora, args.n_layers
    D, V = args.dim, args.vocab_size
    root = V * D * (1 if args.tie_word_embeddings else 2) + D  # embeddings, output, final norm
    A_layer = adapter_params_per_layer(args, lora)
    A = L * A_layer
    frozen = L * frozen_layer_bytes(args, lora, c, S) + root * c
    sharded_grads = cfg.parallel.fsdp != "none"
    t = {"params": frozen / S + A / S * 4,
         "grads": A / S * 4 if sharded_grads else A * 4,
         "adamw": 2 * A / S * 4}
    if cfg.batch.grad_accum > 1 and sharded_grads and fsdp:
        t["grads_in_flight"] = A / S * 4
    if fsdp:
        t["gathered_layers"] = 3 * (frozen_layer_bytes(args, lora, c, S) + A_layer * c) + A_layer * 4
        t["root_unsharded"] = root * c  # gathered for the step; frozen: no gradient
    else:
        t["gathered_layers"] = t["root_unsharded"] = 0.0
    if lora.quantize_base == "nf4":
        shapes = linear_shapes(args)
        biggest = max(shapes[n][0] * shapes[n][1] for n in targets(lora))
        t["nf4_dequant"] = biggest * (8 + 3 * c)
    return t


def lora_staged_bytes(cfg, args: ModelArgs, S: int) -> float:
    """Host bytes an asynchronous save stages per rank: the adapters' fp32 shards and their two
    AdamW moments (the frozen base is never in a LoRA run's checkpoint)."""
    return adapter_params(args, cfg.lora) / S * (4 + 8)


def lora_fix(cfg, fits_with) -> str | None:
    """After train.plan.smallest_fix's single changes (checkpointing, then a smaller micro-batch)
    fail: the two together, then NF4 for the frozen base (QLoRA: costs some accuracy and a
    dequantisation per matmul), alone and with them. `fits_with(mutate)` plans a mutated copy."""
    b = cfg.batch

    def micro(c2, mb: int) -> None:
        c2.batch.micro_batch_size, c2.batch.grad_accum = mb, b.grad_accum * b.micro_batch_size // mb

    def setting(mb: int) -> str:
        return f"batch.micro_batch_size={mb} batch.grad_accum={b.grad_accum * b.micro_batch_size // mb}"

    ac = "parallel.activation_checkpointing=full"
    nf4 = [False, True] if cfg.lora.quantize_base != "nf4" else [False]
    for q in nf4:
        prefix = "lora.quantize_base=nf4 " if q else ""
        if q and fits_with(lambda c2: setattr(c2.lora, "quantize_base", "nf4")):
            return "lora.quantize_base=nf4"
        for mb in [b.micro_batch_size] + [m for m in (8, 4, 2, 1) if m < b.micro_batch_size]:
            # (unchanged micro-batch and no NF4 is checkpointing alone: tried already unless the
            # policy was selective)
            def mutate(c2, mb=mb, q=q):
                c2.parallel.activation_checkpointing = "full"
                micro(c2, mb)
                if q:
                    c2.lora.quantize_base = "nf4"
            tried = mb == b.micro_batch_size and cfg.parallel.activation_checkpointing == "full"
            if (q or not tried) and fits_with(mutate):
                extra = f" {setting(mb)} (same global batch)" if mb != b.micro_batch_size else ""
                return f"{prefix}{ac}{extra}"
    return None
