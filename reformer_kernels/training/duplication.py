"""The paper's duplication task (section 5, "synthetic task"): sequences 0 w 0 w of random symbols
w, whose second w can only be predicted by attending to the first (which LSH attention finds when
the hash puts the matching positions into one bucket); its batches and its accuracy evaluation.
Separate from the text data because it has a score of its own and benchmarks use it alone.
"""
from __future__ import annotations

import csv

import torch

from .._atomic import atomic_write
from .arguments import TrainingArguments

EVAL_HASHES = (1, 2, 4, 8)
ACCURACY_FILE = "accuracy.csv"


def duplication_batch(batch: int, seq_len: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) int64 sequences 0 w 0 w, the symbols of w drawn from 1..vocab_size-1 with
    ``generator`` (on its device)."""
    half = seq_len // 2
    w = torch.randint(1, vocab_size, (batch, half - 1), generator=generator, device=generator.device)
    zero = torch.zeros(batch, 1, dtype=torch.long, device=generator.device)
    return torch.cat([zero, w, zero, w], dim=1)


@torch.no_grad()
def duplication_accuracy(model, tokens: torch.Tensor, num_hashes: int) -> float:
    """The fraction of the second w that ``model`` predicts (argmax) in the sequences ``tokens``
    (B, L) of ``duplication_batch``, hashing with ``num_hashes`` rounds (fresh rotations, as the
    paper evaluates a model with more hashes than it was trained with). ``model`` is ours or
    transformers' ReformerModelWithLMHead."""
    half = tokens.shape[1] // 2
    logits = model(tokens, num_hashes=num_hashes).logits
    # Position t predicts token t + 1: positions half .. L-2 predict the second w.
    predicted = logits[:, half:-1].argmax(-1)
    return (predicted == tokens[:, half + 1 :]).float().mean().item()


class DuplicationData:
    def __init__(self, args: TrainingArguments):
        self.args = args

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        return duplication_batch(self.args.batch_size, self.args.seq_len, self.args.vocab_size, generator)



def evaluate_duplication(
    model, args: TrainingArguments, device: torch.device, sequences: int = 1024, batch_size: int = 128,
) -> dict[int, float]:
    """Accuracy on the second half of ``sequences`` fresh 0 w 0 w sequences (a generator of its
    own, seed + 1) for each number of hashes in EVAL_HASHES."""
    model.eval()
    generator = torch.Generator().manual_seed(args.seed + 1)
    sizes = [min(batch_size, sequences - start) for start in range(0, sequences, batch_size)]
    batches = [duplication_batch(size, args.seq_len, args.vocab_size, generator).to(device) for size in sizes]
    return {n: sum(duplication_accuracy(model, b, n) * len(b) for b in batches) / sequences for n in EVAL_HASHES}


def write_accuracy(accuracy: dict[int, float], path: str) -> None:
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["eval_num_hashes", "accuracy"])
        for n, value in accuracy.items():
            writer.writerow([n, f"{value:.4f}"])
