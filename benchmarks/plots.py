"""PNG plots of a suite's rows: time and peak memory against length (log-log, one line per
competitor), and speed-up over transformers as bars."""
from __future__ import annotations

import os
from collections import defaultdict

from .harness import BASELINE, OK


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plain_numbers(axis) -> None:
    """Tick labels as 2, 20, 200 rather than 2x10^0 on log axes."""
    from matplotlib.ticker import ScalarFormatter

    for setter in (axis.set_major_formatter, axis.set_minor_formatter):
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        setter(formatter)


def _label(row: dict) -> str:
    return row["competitor"] if row["backend"] in ("", "pytorch") else f"{row['competitor']}:{row['backend']}"


def _time(row: dict):
    return row["fwd_bwd_ms"] if row["fwd_bwd_ms"] != "" else row["fwd_ms"]


def plot_suite(rows: list[dict], suite: str, out_dir: str) -> list[str]:
    """Write the suite's plots into ``out_dir``; returns their paths (none when nothing ran)."""
    scored = [row for row in rows if row["status"] == OK and row["accuracy"] != ""]
    paths = _accuracy_lines(scored, suite, out_dir) if scored else []
    ok = [row for row in rows if row["status"] == OK and row["fwd_ms"] != ""]
    if not ok:
        return paths
    plt = _pyplot()
    x_name = "layers" if suite == "model" else "seq_len"
    figures = defaultdict(lambda: defaultdict(list))
    for row in ok:
        figures[(row["op"], row["causal"], row["dtype"])][_label(row)].append(row)
    for (op, causal, dtype), lines in figures.items():
        for what, value, unit in (("time", _time, "ms (fwd+bwd where measured, else fwd)"), ("memory", lambda r: r["peak_mem_mb"], "peak MiB")):
            fig, ax = plt.subplots(figsize=(6.4, 4.4))
            for label, series in sorted(lines.items()):
                series = sorted(series, key=lambda r: int(r[x_name]))
                points = [(int(r[x_name]), float(value(r))) for r in series if value(r) != "" and float(value(r)) > 0]
                if points:
                    ax.plot(*zip(*points), marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            _plain_numbers(ax.xaxis)
            _plain_numbers(ax.yaxis)
            ax.set_xlabel(x_name)
            ax.set_ylabel(unit)
            ax.set_title(f"{suite}: {op} ({dtype}{', causal' if str(causal) == 'True' else ''})")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            path = os.path.join(out_dir, f"{suite}_{op}_{'causal' if str(causal) == 'True' else 'full'}_{dtype}_{what}.png")
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    paths += _speedup_bars(ok, suite, out_dir, x_name, plt)
    return paths


def _speedup_bars(rows: list[dict], suite: str, out_dir: str, x_name: str, plt) -> list[str]:
    """Speed-up over transformers at the largest size each op reached, one bar per competitor."""
    largest = {}
    for row in rows:
        if row["speedup_vs_transformers"] == "" or row["competitor"] == BASELINE:
            continue
        key = (row["op"], str(row["causal"]), _label(row))
        if key not in largest or int(row[x_name]) > int(largest[key][x_name]):
            largest[key] = row
    if not largest:
        return []
    keys = sorted(largest)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(keys)), 4.8))
    names = [f"{op}{' causal' if causal == 'True' else ''}\n{label}\n{x_name}={largest[(op, causal, label)][x_name]}" for op, causal, label in keys]
    ax.bar(range(len(keys)), [float(largest[key]["speedup_vs_transformers"]) for key in keys])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(keys)), names, rotation=90, fontsize=6)
    ax.set_yscale("log")
    _plain_numbers(ax.yaxis)
    ax.set_ylabel("speed-up vs transformers (x)")
    ax.set_title(f"{suite}: speed-up over transformers")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{suite}_speedup.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _accuracy_lines(rows: list[dict], suite: str, out_dir: str) -> list[str]:
    """Accuracy against the number of hashes at evaluation, one line per competitor."""
    plt = _pyplot()
    lines = defaultdict(list)
    for row in rows:
        lines[_label(row)].append((int(row["n_hashes"]), float(row["accuracy"])))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, points in sorted(lines.items()):
        ax.plot(*zip(*sorted(points)), marker="o", label=label)
    ax.set_xscale("log", base=2)
    _plain_numbers(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("n_hashes at evaluation")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{suite}: {rows[0]['op']} (seq_len {rows[0]['seq_len']})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{suite}_{rows[0]['op']}_accuracy.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_generate(rows: list[dict], out_dir: str) -> str:
    """The generate suite's log-log plot: milliseconds per new token against the context, wall time
    and the process's CPU time side by side, one line per generator and batch (a dashed line for
    batch > 1); returns its path."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    lines = defaultdict(list)
    for row in rows:
        lines[(row["generator"], int(row["batch"]))].append(row)
    colors = {name: f"C{i}" for i, name in enumerate(sorted({generator for generator, _ in lines}))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, column, what in zip(axes, ("ms_per_token", "cpu_ms_per_token"), ("wall", "CPU")):
        for (generator, batch), series in sorted(lines.items()):
            points = sorted((int(r["context"]), float(r[column])) for r in series)
            ax.plot(*zip(*points), marker="o", color=colors[generator], linestyle="-" if batch == 1 else "--",
                    label=f"{generator}, batch {batch}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        contexts = sorted({int(r["context"]) for r in rows})
        ax.set_xticks(contexts, [f"{c // 1024}K" if c % 1024 == 0 else str(c) for c in contexts])
        _plain_numbers(ax.yaxis)
        ax.yaxis.set_minor_formatter(NullFormatter())  # the decades span several: labels on 1, 10, 100 only
        ax.set_xlabel("context (tokens before the new one)")
        ax.set_ylabel(f"{what} ms per new token")
        ax.set_title(f"cached greedy decoding: {what} time per token")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "generate_ms_per_token.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
