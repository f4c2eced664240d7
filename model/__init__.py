"""A handwritten LLaMA (1, 2, 3): model, tokenizer, checkpoint format, sampling."""

from model.args import PRESETS, ModelArgs
from model.checkpoint import CheckpointError, load_args, load_model, save_checkpoint
from model.llama import Transformer
from model.sampling import generate
from model.tokenizer import Tokenizer, load_tokenizer

__all__ = ["PRESETS", "ModelArgs", "Transformer", "Tokenizer", "load_tokenizer", "CheckpointError", "load_args",
           "load_model", "save_checkpoint", "generate"]
