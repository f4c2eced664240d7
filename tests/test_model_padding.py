"""The padding policy (docs/DESIGN.md): right padding with labels -100 never changes the loss,
whether the pad slots hold the EOS id or Alpaca's appended `[PAD]` row. The oracle is the same
model run on each example alone, without any padding. (Appending the row itself adds a column to
the softmax, which shifts every loss a little: that is Alpaca's resize, not padding.)"""

import torch
import torch.nn.functional as F

from model import ModelArgs, Transformer

IGNORE = -100


def summed_loss(model, tokens, labels):
    logits = model.logits(tokens).float()
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")


def test_pad_id_choice_cannot_change_the_loss():
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=50, multiple_of=16)
    model = Transformer(args)
    model.init_weights()
    eos = 2
    # (sequence, number of prompt tokens whose targets are masked)
    examples = [([1, 7, 8, 9, 10, 11, eos], 3), ([1, 12, 13, eos], 2), ([1, 5, 6, 20, 21, 22, 23, 24, eos], 4)]

    def unpadded_oracle():
        total = 0.0
        for seq, n_prompt in examples:
            t = torch.tensor([seq[:-1]])
            lab = torch.tensor([seq[1:]])
            lab[0, : n_prompt - 1] = IGNORE
            total += summed_loss(model, t, lab).item()
        return total

    def padded(pad_id):
        T = max(len(s) for s, _ in examples) - 1
        tokens = torch.full((len(examples), T), pad_id)
        labels = torch.full((len(examples), T), IGNORE)
        for i, (seq, n_prompt) in enumerate(examples):
            tokens[i, : len(seq) - 1] = torch.tensor(seq[:-1])
            labels[i, : len(seq) - 1] = torch.tensor(seq[1:])
            labels[i, : n_prompt - 1] = IGNORE
        return tokens, labels

    with torch.no_grad():
        oracle = unpadded_oracle()
        loss_eos = summed_loss(model, *padded(eos)).item()
        model.resize_token_embeddings(args.vocab_size + 1)  # Alpaca's [PAD] row, id 50
        oracle_resized = unpadded_oracle()
        loss_pad_row = summed_loss(model, *padded(50)).item()
        loss_eos_resized = summed_loss(model, *padded(eos)).item()
    assert abs(loss_eos - oracle) <= 1e-5 * abs(oracle)
    assert abs(loss_pad_row - oracle_resized) <= 1e-5 * abs(oracle_resized)
    assert abs(loss_eos_resized - loss_pad_row) <= 1e-5 * abs(loss_pad_row)


def test_resized_rows_are_the_mean_of_the_old_ones():
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=10, multiple_of=8))
    model.init_weights()
    emb = model.tok_embeddings.weight.detach().clone()
    out = model.output.weight.detach().clone()
    model.resize_token_embeddings(11)
    assert model.args.vocab_size == 11
    assert torch.allclose(model.tok_embeddings.weight[10], emb.mean(0))
    assert torch.allclose(model.output.weight[10], out.mean(0))
    assert model.logits(torch.tensor([[10, 3]])).shape == (1, 2, 11)
