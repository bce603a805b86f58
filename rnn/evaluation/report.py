"""Stage 6, report: every trained run of the grid side by side (markdown, JSON, PNG curves)."""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from rnn.evaluation.evaluate import read_eval
from rnn.store.atomic import atomic_dir
from rnn.store.record import read_record

REPORT_MD, REPORT_JSON, CURVES_PNG = "report.md", "report.json", "perplexity.png"


@dataclass(frozen=True)
class RunFiles:
    """Where one compared run's record, evaluation and metrics are; ``run`` labels its row."""

    run: str
    model_dir: Path
    eval_dir: Path
    metrics_dir: Path


@dataclass(frozen=True)
class ReportRow:
    run: str
    model: str  # "gru, 2 x 256": cell, layers and units
    train_perplexity: float
    valid_perplexity: float | None
    test_perplexity: float | None
    tokens_per_s: float
    wall_time_s: float
    num_params: int
    epochs: int
    best_epoch: int | None
    sample: str  # greedy unless evaluate.temperature > 0
    sampled: str  # at evaluate.sample_temperature; "" when off


def _read_curve(metrics_dir: Path, name: str) -> list[tuple[int, float]]:
    """(epoch, value) of one metric; dvclive counts steps from 0, epochs count from 1."""
    path = metrics_dir / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [
            (int(r["step"]) + 1, float(r[name.split("/")[-1]]))
            for r in csv.DictReader(f, delimiter="\t")
        ]


def collect_row(run: str, model_dir: Path, eval_dir: Path, metrics_dir: Path) -> ReportRow:
    record, evaluation = read_record(model_dir), read_eval(eval_dir)
    seconds = [s for _, s in _read_curve(metrics_dir, "train/epoch_seconds")]
    rates = [r for _, r in _read_curve(metrics_dir, "train/tokens_per_s")]
    tokens = sum(r * s for r, s in zip(rates, seconds, strict=True))
    ppl, args = evaluation["perplexity"], record["model_args"]
    return ReportRow(
        run=run,
        model=f"{args.get('cell', 'rnn')}, {args.get('num_layers', 1)} x {args['num_hiddens']}",
        train_perplexity=record["train_perplexity"],
        valid_perplexity=ppl.get("valid"),
        test_perplexity=ppl.get("test"),
        tokens_per_s=tokens / sum(seconds) if seconds else float("nan"),
        wall_time_s=sum(seconds),
        num_params=record["num_params"],
        epochs=record["epochs"],
        best_epoch=record.get("best_epoch"),
        sample=next(iter(evaluation["samples"].values()), ""),
        sampled=next(iter(evaluation.get("sampled", {}).values()), ""),
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def markdown_table(rows: list[ReportRow]) -> str:
    lines = [
        "| run | model | train ppl | valid ppl | test ppl | tokens/s | wall time (s) | "
        "parameters | epochs (best) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        best = f" ({r.best_epoch})" if r.best_epoch is not None else ""
        lines.append(
            f"| {r.run} | {r.model} | {_fmt(r.train_perplexity)} | {_fmt(r.valid_perplexity)} | "
            f"{_fmt(r.test_perplexity)} | {r.tokens_per_s:,.0f} | {r.wall_time_s:,.1f} | "
            f"{r.num_params:,} | {r.epochs}{best} |"
        )
    samples = ["", "Samples (greedy unless evaluate.temperature > 0):", ""]
    samples += [f"- **{r.run}**: `{r.sample}`" for r in rows]
    if any(r.sampled for r in rows):
        samples += ["", "Sampled (evaluate.sample_temperature, sample_top_k):", ""]
        samples += [f"- **{r.run}**: `{r.sampled}`" for r in rows if r.sampled]
    return "\n".join(lines + samples) + "\n"


Curve = list[tuple[int, float]]  # (epoch, perplexity)


def plot_curves(runs: dict[str, Path], out: Path) -> None:
    """The perplexity curves of ``runs`` (their metrics directories), as a PNG file."""
    curves = {
        run: {
            split: _read_curve(metrics_dir, f"{split}/perplexity") for split in ("train", "valid")
        }
        for run, metrics_dir in runs.items()
    }
    out.write_bytes(curves_png(curves))


def curves_png(curves: dict[str, dict[str, Curve]], size: tuple[float, float] = (7, 4.5)) -> bytes:
    """Train (solid) and validation (dashed) perplexity per epoch of each run, log scale, as PNG
    bytes (the same picture for the report and the Prefect UI). One drawing at a time: pyplot
    and its mathtext parser are not thread-safe, and a flow trains its runs in threads."""
    with _DRAWING:
        return _curves_png(curves, size)


_DRAWING = threading.Lock()


def _curves_png(curves: dict[str, dict[str, Curve]], size: tuple[float, float]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=size)
    for run, splits in curves.items():
        for split, style in (("train", "-"), ("valid", "--")):
            if splits.get(split):
                ax.plot(*zip(*splits[split], strict=True), style, label=f"{run} {split}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110 if size[0] >= 7 else 80, metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def build_report(runs: list[RunFiles], out_dir: str | Path) -> list[ReportRow]:
    """Compare ``runs`` (one workspace's, or recorded runs gathered from anywhere)."""
    rows = [collect_row(r.run, r.model_dir, r.eval_dir, r.metrics_dir) for r in runs]
    with atomic_dir(out_dir) as tmp:
        (tmp / REPORT_MD).write_text("# RNN language models compared\n\n" + markdown_table(rows))
        (tmp / REPORT_JSON).write_text(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
        plot_curves({r.run: r.metrics_dir for r in runs}, tmp / CURVES_PNG)
    return rows
