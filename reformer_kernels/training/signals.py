"""Ctrl-C during training: the first one stops after the current step and saves, a second one
quits at once. Separate because it swaps the process's SIGINT handler, which must be put back.
"""
from __future__ import annotations

import signal
import threading

from tqdm import tqdm


class CtrlC:
    """The first Ctrl-C asks the loop to stop after the current step (so that the checkpoint is
    one consistent step); a second one interrupts at once, without saving."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to quit without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
