"""The loss curve (``loss.png``). Separate because matplotlib is optional: without it a run
trains and saves all the same and says how to get the plot.
"""
from __future__ import annotations

import os

import torch
from tqdm import tqdm

from .._atomic import atomic_write

LOSS_PLOT = "loss.png"


def plot_losses(losses: list[float], path: str) -> bool:
    """Write the loss curve (each step and a moving average) to ``path``; False (with a message)
    when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        tqdm.write(f"matplotlib is not installed, so there is no {os.path.basename(path)}: pip install matplotlib")
        return False
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="step")
    window = max(1, len(losses) // 50)
    if window > 1:
        kernel = torch.ones(window) / window
        smooth = torch.nn.functional.conv1d(torch.tensor(losses)[None, None], kernel[None, None]).flatten().tolist()
        ax.plot(range(window, len(losses) + 1), smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    figure.tight_layout()
    with atomic_write(path) as f:
        figure.savefig(f, format="png", dpi=100)
    return True
