"""Saving files so that a failed or interrupted save leaves the previous ones whole: every file of
the package's saves (model, config, tokenizer, training checkpoint) goes through ``atomic_write``.

A file is written to a temporary name in its own folder (so that the rename stays on one file
system), flushed and fsynced, then ``os.replace``d onto its name: a reader sees the old file or
the new one, never a part. Inside ``all_or_nothing()`` the renames wait until the whole block has
written its files, then happen in the order the files were written; an error anywhere in the block
removes every temporary file and renames nothing, so a failed save never mixes two checkpoints.
Writing is what fails (a full disk, a quota, Ctrl-C); the renames that follow allocate nothing.
The one window left: a kill or power loss between two renames (microseconds apart) can leave
some files of the new save beside the old trainer_state.json, which is renamed last.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import secrets

# The (temporary, final) paths written inside the innermost all_or_nothing(), or None outside one.
_pending: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar("pending", default=None)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None, newline: str | None = None):
    """Open a temporary file next to ``path`` for writing ("wb" or "w"); when the block ends
    without error, flush, fsync and rename it onto ``path`` (inside ``all_or_nothing()``: when that
    block ends). On an error the temporary file is removed and ``path`` is left as it was.
    ``encoding`` and ``newline`` are those of ``open`` in text mode."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r}: pass 'w' (text) or 'wb' (bytes)")
    path = os.fspath(path)
    folder, name = os.path.split(path)
    # A hidden name of our own ("x": never another file's), created with the umask's permissions.
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _remove(temporary)
        raise
    pending = _pending.get()
    if pending is None:
        _replace([(temporary, path)])
    else:
        pending.append((temporary, path))


@contextlib.contextmanager
def all_or_nothing():
    """Commit the files that ``atomic_write`` writes inside the block together, after it (see the
    module doc); nested blocks join the outer one."""
    if _pending.get() is not None:
        yield
        return
    pending: list[tuple[str, str]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for temporary, _ in pending:
            _remove(temporary)
        raise
    finally:
        _pending.reset(token)
    _replace(pending)


def _replace(pairs: list[tuple[str, str]]) -> None:
    done = 0
    try:
        for temporary, path in pairs:
            os.replace(temporary, path)
            done += 1
    except BaseException:
        for temporary, _ in pairs[done:]:
            _remove(temporary)
        raise
    # The renames themselves reach the disk when the folders' entries do.
    for folder in dict.fromkeys(os.path.dirname(path) or "." for _, path in pairs):
        _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    # Best effort: Windows cannot open a folder, and some file systems refuse to fsync one.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
