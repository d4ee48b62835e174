"""Training a causal Reformer language model, as ``reformer-kernels train`` runs it.

Data is either a text file (tokenized with ``ByteTokenizer`` or a sentencepiece
``ReformerTokenizer``; every step trains on random windows of ``seq_len`` tokens) or the paper's
duplication task (section 5, "synthetic task": sequences 0 w 0 w of random symbols w; the second
w can only be predicted by attending to the first, which LSH attention finds when the hash puts
the matching positions into one bucket).

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``, loadable
by transformers), the tokenizer's files, ``trainer_state.json`` (the run's arguments, step, loss
history, tokenizer kind) and ``optimizer.pt`` (AdamW state and the RNG states of the data and of
torch, which draws the hashing rotations), so that a resumed run continues bit for bit as the
uninterrupted one would. ``loss.png`` plots the loss curve when matplotlib is installed. A save
is all or nothing (reformer_kernels._atomic); a loss or weights that stop being finite end the
run with ``DivergedError``, saving nothing of them.

One concern per module, each importing only those listed before it: ``arguments``, ``model``
(the config of the model trained), ``duplication`` (the task), ``data`` (text and tokenizers),
``plots``, ``checkpoints``, ``signals`` (Ctrl-C), ``loop`` (``train``) and ``generation``.
"""
from .arguments import TASKS, TOKENIZERS, TrainingArguments
from .checkpoints import IDS, OPTIMIZER_FILE, STATE_FILE, read_state
from .data import encode_text_file, load_tokenizer
from .duplication import ACCURACY_FILE, EVAL_HASHES, duplication_accuracy, duplication_batch, evaluate_duplication, write_accuracy
from .generation import GenerationStream, generate, generate_stream, read_prompt_file
from .loop import DivergedError, TrainingResult, train
from .model import model_settings
from .plots import LOSS_PLOT, plot_losses

__all__ = [
    "ACCURACY_FILE",
    "DivergedError",
    "EVAL_HASHES",
    "GenerationStream",
    "IDS",
    "LOSS_PLOT",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "TASKS",
    "TOKENIZERS",
    "TrainingArguments",
    "TrainingResult",
    "duplication_accuracy",
    "duplication_batch",
    "encode_text_file",
    "evaluate_duplication",
    "generate",
    "generate_stream",
    "load_tokenizer",
    "model_settings",
    "plot_losses",
    "read_prompt_file",
    "read_state",
    "train",
    "write_accuracy",
]
