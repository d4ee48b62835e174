"""Training a new sentencepiece model for ``ReformerTokenizer.train``: the trainer's options
(unk 0, eos 1, the special tokens as control symbols, no BOS) and reading the text from files or
an iterator with a progress bar. Separate because it is the only code that trains rather than
runs a model, and the only reader of raw training text.
"""
import io
import os

import sentencepiece
from tqdm import tqdm


def train_model(
    files_or_iterator, *, vocab_size, model_type, eos_token, unk_token, pad_token, additional_special_tokens,
    character_coverage, progress, **sentencepiece_options,
):
    """The serialized sentencepiece model proto (bytes) trained on the text; the arguments are
    those of ``ReformerTokenizer.train``."""
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r}: pass 'bpe' or 'unigram'")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size!r}: pass a positive int")
    specials = [t for t in (pad_token, *(additional_special_tokens or ())) if t is not None]
    options = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "character_coverage": character_coverage,
        "unk_id": 0,
        "unk_piece": unk_token,
        "eos_id": -1,
        "bos_id": -1,
        "pad_id": -1,
        "control_symbols": [t for t in specials if t not in (eos_token, unk_token)],
        "num_threads": os.cpu_count() or 1,
        "minloglevel": 1,
    }
    if eos_token is not None:
        options.update(eos_id=1, eos_piece=eos_token)
    options.update(sentencepiece_options)
    lines, bar, failure = training_lines(files_or_iterator, progress)
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=model, **options)
    except RuntimeError as e:
        if failure:
            raise failure[0] from e
        raise ValueError(f"sentencepiece could not train with vocab_size={vocab_size}, model_type={model_type!r}: {e}") from e
    finally:
        bar.close()
    if failure:
        raise failure[0]
    return model.getvalue()


def training_lines(files_or_iterator, progress):
    """(line iterator for sentencepiece, its progress bar, list that receives an input error).

    An error raised inside the iterator would reach us as sentencepiece's RuntimeError, so it is
    kept and re-raised by ``train_model`` instead.
    """
    failure = []
    if isinstance(files_or_iterator, (str, os.PathLike)):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, (list, tuple)):
        paths = []
        for i, p in enumerate(files_or_iterator):
            if not isinstance(p, (str, os.PathLike)) or not os.path.isfile(p):
                raise ValueError(
                    f"files_or_iterator[{i}]={p!r} is not a file: pass text file paths, "
                    "or an iterator of texts (e.g. iter(texts)) to train on strings"
                )
            paths.append(os.fspath(p))
        bar = tqdm(total=sum(map(os.path.getsize, paths)), unit="B", unit_scale=True, desc="reading text", disable=not progress)

        def lines():
            for path in paths:
                with open(path, "rb") as f:
                    for number, raw in enumerate(f, 1):
                        bar.update(len(raw))
                        try:
                            yield raw.decode("utf-8")
                        except UnicodeDecodeError as e:
                            failure.append(ValueError(f"{path} line {number} is not UTF-8 ({e}): pass UTF-8 text files"))
                            return
            bar.set_description("training")

    else:
        try:
            texts = iter(files_or_iterator)
        except TypeError:
            raise TypeError(
                f"files_or_iterator must be a path, a list of paths or an iterable of str, got {type(files_or_iterator).__name__}"
            ) from None
        bar = tqdm(unit="char", unit_scale=True, desc="reading text", disable=not progress)

        def lines():
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    failure.append(TypeError(f"files_or_iterator item {i} is a {type(text).__name__}: yield str"))
                    return
                bar.update(len(text))
                yield from text.splitlines()
            bar.set_description("training")

    return lines(), bar, failure

