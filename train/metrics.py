"""Rank-0 logging: a progress line, TensorBoard scalars/text, and `metrics.jsonl`.

`metrics.jsonl` is the machine-readable record: one JSON object per optimizer step with at least
step, loss, lr, grad_norm, tokens, tokens_per_s (GUIDE.md). On resume the rows after the resumed
step (written by the run that died) are dropped, so the file reads as one uninterrupted run.

Throughput is counted in real tokens (non-padding inputs, summed over ranks): padding is work the
GPU does but not progress. MFU = model FLOPs / step time / peak FLOP/s, with a step's model FLOPs

    6 * N * tokens + 12 * n_layers * dim * sum over documents of L_i^2
    - 6 * vocab * dim * (tokens - targets)   (the output projection runs for target tokens only)

(forward + backward, PaLM's definition: activation recomputation is not counted, nor is padding).
N is the non-embedding parameter count (`matmul_params`), as PaLM and torchtitan count it: the
input embedding is a table lookup, not a matmul, so its vocab x dim parameters do no FLOPs. With
tied embeddings the one shared matrix is also the output projection's weight, which is a matmul,
so it stays in N (and, like the untied output, counts for target tokens only).
A token of a document of length L attends to L keys: a packed row's examples are the documents,
an unpacked row is one document of its real length. Counting a packed row's attention as T^2
would credit work the document mask forbids (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from data.alpaca import IGNORE_INDEX
from model.args import ModelArgs

# Dense bf16 peak, TFLOP/s, keyed by the exact `torch.cuda.get_device_name` string: the PCIe and
# NVL parts of one chip run lower clocks and power, so a substring match ("H100") would credit a
# PCIe card with the SXM peak. Numbers are NVIDIA's datasheets (their sparse figures halved);
# any other name gets no MFU rather than a made-up one (TRAIN_PEAK_TFLOPS declares one).
PEAK_TFLOPS_BF16 = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
}


def matmul_params(args: ModelArgs) -> int:
    """Non-embedding parameters: all but the input embedding table, whose lookup does no FLOPs.
    A tied model's shared matrix is kept: it is the output projection's weight too."""
    return args.num_params() - (0 if args.tie_word_embeddings else args.vocab_size * args.dim)


def model_flops(args: ModelArgs, tokens: float, attention_pairs: float, targets: float | None = None) -> float:
    """Model FLOPs of `tokens` real tokens whose documents' squared lengths sum to `attention_pairs`.
    With `targets`, the output projection counts only for tokens that have a target: the loss
    projects only those (model/llama.py, target_index), so MFU credits no skipped work."""
    flops = 6.0 * matmul_params(args) * tokens + 12.0 * args.n_layers * args.dim * attention_pairs
    if targets is not None:
        flops -= 6.0 * args.vocab_size * args.dim * (tokens - targets)
    return flops


def document_lengths(batch) -> torch.Tensor:
    """Lengths of the real documents of a batch (1-D LongTensor), read from the batch on the host.

    Packed rows: runs of equal `document_ids`; a run without any target is the padding tail
    (every example has at least one target). Unpacked rows (document_ids None): each row is one
    right-padded example, of length 1 + the index of its last target.
    """
    labels = batch.labels
    has_target = labels != IGNORE_INDEX  # (B, T)
    B, T = labels.shape
    if batch.document_ids is None:
        idx = torch.arange(1, T + 1).expand(B, T)
        lengths = torch.where(has_target, idx, 0).amax(dim=1)
        return lengths[lengths > 0]
    # One key per (row, document): runs never merge across rows.
    keys = (batch.document_ids + torch.arange(B)[:, None] * (T + 1)).flatten()
    _, inverse, counts = torch.unique_consecutive(keys, return_inverse=True, return_counts=True)
    targets = torch.zeros(len(counts), dtype=torch.long).index_add_(0, inverse, has_target.flatten().long())
    return counts[targets > 0]


def attention_pairs(batch) -> int:
    """sum of L_i^2 over the batch's documents: the (query, key) pairs that attention FLOPs scale with."""
    return int((document_lengths(batch) ** 2).sum())


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of one accelerator, or None where it is not known (CPU included:
    a CPU's "peak" depends on the ISA, clocks and core count, so MFU there would be invented).
    TRAIN_PEAK_TFLOPS overrides, for a GPU missing from the table."""
    if os.environ.get("TRAIN_PEAK_TFLOPS"):
        return float(os.environ["TRAIN_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    tflops = peak_tflops_bf16(torch.cuda.get_device_name(device))
    return tflops * 1e12 if tflops is not None else None


def peak_tflops_bf16(device_name: str) -> float | None:
    """Dense bf16 TFLOP/s of the GPU named exactly `device_name` (as torch reports it), else None."""
    return PEAK_TFLOPS_BF16.get(device_name.strip())


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1e9 if sys.platform == "darwin" else 1e6)


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    """Writes only on rank 0; other ranks get a logger whose methods do nothing."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.unlink(missing_ok=True)  # a fresh run starts a fresh record
        else:
            self._truncate_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # On resume, purge_step hides the events the dead run logged after the checkpoint.
            self.tb = SummaryWriter(str(out_dir / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        """Keep rows up to `step` (atomic rewrite): later ones belong to work the resume redoes."""
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        os.replace(tmp, self.path)

    def log_step(self, row: dict[str, Any], total_steps: int, print_line: bool) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and v is not None and k != "step":
                    self.tb.add_scalar(f"train/{k}", v, row["step"])
        if print_line:
            mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
            skipped = "  SKIPPED (non-finite)" if row.get("skipped") else ""
            print(f"step {row['step']}/{total_steps}  loss {row['loss']:.4f}  lr {row['lr']:.3e}  "
                  f"grad_norm {row['grad_norm']:.3f}  tok/s {row['tokens_per_s']:.0f}  mfu {mfu}  "
                  f"mem {row['peak_mem_gb']:.2f}GB  eta {_fmt_eta(row['eta_s'])}{skipped}", flush=True)

    def log_eval(self, step: int, values: dict[str, float], samples: list[tuple[str, str]]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k.replace("eval_", "eval/"), v, step)
            if samples:
                text = "\n\n".join(f"**prompt** {p}\n\n**response** {r}" for p, r in samples)
                self.tb.add_text("eval/samples", text, step)
        print(f"eval step {step}  " + "  ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
        for p, r in samples[:2]:
            print(f"  sample: {p[-60:]!r} -> {r[:80]!r}", flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Throughput:
    """Step timing, tokens/s, MFU, ETA (averaged over the steps of this process's life)."""

    def __init__(self, args: ModelArgs, device: torch.device, world_size: int):
        self.args, self.device = args, device
        self.peak = peak_flops(device)
        self.world = world_size
        self.start = time.perf_counter()
        self.steps = 0

    def measure(self, step_time: float, tokens: float, attention_pairs: float, remaining_steps: int,
                targets: float | None = None) -> dict[str, Any]:
        """tokens and attention_pairs (see `attention_pairs`) of the whole step, all ranks."""
        self.steps += 1
        tps = tokens / max(step_time, 1e-9)
        mfu = None
        if self.peak is not None:  # per-device MFU: global model FLOP/s over all devices' peak
            mfu = (model_flops(self.args, tokens, attention_pairs, targets) / max(step_time, 1e-9)
                   / (self.peak * self.world))
        avg = (time.perf_counter() - self.start) / self.steps
        return {"tokens_per_s": tps, "step_time_s": step_time, "mfu": mfu,
                "peak_mem_gb": peak_memory_gb(self.device), "eta_s": avg * remaining_steps}
