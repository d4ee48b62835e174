"""Text data: the tokenizer of a run (a new one, or the one saved in a checkpoint folder) and
random windows of the text file's token stream. Separate from the loop so that ``generate`` and
resume find a checkpoint's tokenizer the same way.
"""
from __future__ import annotations

import os

import torch
from tqdm import tqdm

from ..tokenization import ByteTokenizer, ReformerTokenizer
from ..tokenization.files import CONFIG_FILE, MODEL_FILES, read_json
from .arguments import TrainingArguments


class TextData:
    """Random windows of seq_len tokens of the whole file's token stream."""

    def __init__(self, ids: torch.Tensor, args: TrainingArguments):
        if ids.numel() < args.seq_len:
            raise ValueError(
                f"--text {args.text!r} has {ids.numel()} tokens, fewer than --seq-len {args.seq_len}: "
                "pass a longer text or a smaller --seq-len"
            )
        self.ids, self.args = ids, args

    def batch(self, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, self.ids.numel() - self.args.seq_len + 1, (self.args.batch_size,), generator=generator)
        return self.ids[starts[:, None] + torch.arange(self.args.seq_len)]


def encode_text_file(path: str, tokenizer, progress: bool = True) -> torch.Tensor:
    """The file's token stream (int64): its exact bytes for ByteTokenizer; for sentencepiece, each
    line (without its line break, which sentencepiece would turn into a space) followed by EOS."""
    with open(path, "rb") as f:
        data = f.read()
    if isinstance(tokenizer, ByteTokenizer):
        return torch.tensor(tokenizer.encode(data), dtype=torch.long)
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--text {path!r} is not UTF-8 ({e}): pass a UTF-8 text file or use --tokenizer byte") from None
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = []
    batch = 10_000
    for start in tqdm(range(0, len(lines), batch), desc="tokenizing", unit="block", disable=not progress):
        for row in tokenizer(lines[start : start + batch], return_attention_mask=False)["input_ids"]:
            ids.extend(row + eos)
    return torch.tensor(ids, dtype=torch.long)


def new_tokenizer(args: TrainingArguments, progress: bool):
    if args.tokenizer == "byte":
        return ByteTokenizer()
    if args.tokenizer == "sentencepiece":
        return ReformerTokenizer.train(args.text, vocab_size=args.vocab_size, progress=progress)
    return ReformerTokenizer.from_pretrained(args.tokenizer)


def load_tokenizer(directory: str):
    """The tokenizer saved in a checkpoint folder: ByteTokenizer, ReformerTokenizer, or None where
    tokens are plain ids (a task, or a folder with no tokenizer files)."""
    config_path = os.path.join(directory, CONFIG_FILE)
    if os.path.isfile(config_path) and read_json(config_path).get("tokenizer_class") == "ByteTokenizer":
        return ByteTokenizer.from_pretrained(directory)
    if any(os.path.isfile(os.path.join(directory, name)) for name in MODEL_FILES):
        return ReformerTokenizer.from_pretrained(directory)
    return None
