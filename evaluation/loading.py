"""A checkpoint ready to answer prompts: the device, the model with its tokenizer, and the template
its training run used. tools.chat and `python -m tools.eval generate` load through here, so both
accept and refuse the same things with the same one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from data.prompts import get_template
from model.llama import Transformer
from model.tokenizer import Tokenizer, TokenizerError, load_tokenizer, vocab_mismatch


class LoadError(ValueError):
    """A checkpoint, tokenizer or device the user can fix; one printable line."""


def check_device(name: str) -> torch.device:
    """The --device as torch.device, or a LoadError when this machine or torch build lacks it."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise LoadError(f"--device {name}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise LoadError(f"--device {name}: {why} (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LoadError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise LoadError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise LoadError(f"--device {name}: use cpu, cuda, cuda:N or mps")
    return device


def load_for_inference(ckpt: Path, tokenizer_path: Path | None, device: torch.device | str,
                       dtype: torch.dtype) -> tuple[Transformer, Tokenizer]:
    """Model and tokenizer from a project checkpoint directory; every way it fails to load is
    one LoadError line."""
    from safetensors import SafetensorError

    from model.checkpoint import CheckpointError, load_args, load_model

    if not ckpt.is_dir():
        raise LoadError(f"{ckpt}: not a checkpoint directory (config.json, *.safetensors, tokenizer.model)")
    tok_path = tokenizer_path or ckpt / "tokenizer.model"
    if not tok_path.is_file():
        raise LoadError(f"{tok_path}: tokenizer not found (pass --tokenizer PATH)")
    try:
        args = load_args(ckpt)
        tokenizer = load_tokenizer(tok_path)
        problem = vocab_mismatch(tok_path, tokenizer.vocab_size, args.vocab_size)
        if problem:
            raise LoadError(problem)
        return load_model(ckpt, device=device, dtype=dtype), tokenizer
    except (CheckpointError, TokenizerError, SafetensorError, OSError) as e:
        raise LoadError(f"{ckpt}: checkpoint does not load: {e}") from None


def trained_template(ckpt: Path) -> str | None:
    """The template the run that exported `ckpt` trained with (its config.yaml sits beside
    `final/`), checked as training checks it; None when there is no such run (a converted
    Meta/HF checkpoint): the caller picks its own default."""
    run_config = ckpt / ".." / "config.yaml"
    if not run_config.is_file():
        return None
    try:
        template = (yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}).get("data", {}).get("template")
    except (yaml.YAMLError, OSError, AttributeError) as e:
        raise LoadError(f"{run_config}: cannot read the training run's template ({type(e).__name__}); "
                        "pass --template") from None
    if not template:
        return None
    try:
        get_template(template)  # a built-in name or a .json template file, as training accepts
    except (ValueError, TypeError) as e:
        raise LoadError(f"{run_config}: data.template: {e}; pass --template") from None
    return template
