"""A sweep side by side: every trial's parameters, objective, epochs, state and wall time, best
first; the best trial's samples; and the plots people read for searches (the optimisation history,
the objective against each parameter, the parameters' importances) as PNG files. Written as a
whole (a temporary directory renamed into place), so a failed report never replaces a good one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rnn.store.atomic import atomic_dir

REPORT_MD, REPORT_JSON = "sweep.md", "sweep.json"
HISTORY_PNG, PARAMS_PNG, IMPORTANCE_PNG = "history.png", "params.png", "importance.png"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "state", "validation loss", "epochs", "wall s", *keys, "experiment / reason"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            str(r["trial"]),
            r["state"],
            _fmt(r["objective"]),
            str(r["epochs"]),
            _fmt(r["wall_s"]),
            *(_fmt(r["params"].get(k)) for k in keys),
            r["experiment"] if r["state"] == "complete" else r["reason"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def progress_line(rows: list[dict[str, Any]]) -> str:
    """Trials done, pruned, failed, running, and the best so far, in one line."""
    count = {
        s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "running")
    }
    best = min((r["objective"] for r in rows if r["state"] == "complete"), default=None)
    shown = f"{best:.4f} nats" if best is not None else "none yet"
    return (
        f"{count['complete']} complete, {count['pruned']} pruned, {count['fail']} failed, "
        f"{count['running']} running; best validation loss {shown}"
    )


def _plots(rows: list[dict[str, Any]], importances: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: r["trial"])
    fig, ax = plt.subplots(figsize=(7, 4))
    if done:
        xs, ys = [r["trial"] for r in done], [r["objective"] for r in done]
        ax.plot(xs, ys, "o", label="complete trial")
        best = [min(ys[: i + 1]) for i in range(len(ys))]
        ax.step(xs, best, where="post", label="best so far")
    pruned = [r["trial"] for r in rows if r["state"] == "pruned"]
    ax.plot(pruned, [ax.get_ylim()[1]] * len(pruned), "x", color="grey", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss (nats)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / HISTORY_PNG, dpi=110, metadata={"Software": None})
    plt.close(fig)

    keys = sorted({k for r in done for k in r["params"]})
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3.2))
    for ax, key in zip(list(getattr(axes, "flat", [axes])), keys, strict=False):
        points = [(r["params"][key], r["objective"]) for r in done if key in r["params"]]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
        xs = [x if numeric else str(x) for x, _ in points]
        ax.plot(xs, [y for _, y in points], "o")
        if numeric and points and min(x for x, _ in points) > 0:
            values = [x for x, _ in points]
            if max(values) / min(values) > 20:
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(True, alpha=0.3)
    next(iter(getattr(axes, "flat", [axes]))).set_ylabel("validation loss (nats)")
    fig.tight_layout()
    fig.savefig(out / PARAMS_PNG, dpi=110, metadata={"Software": None})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * max(len(importances), 1)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
    fig.tight_layout()
    fig.savefig(out / IMPORTANCE_PNG, dpi=110, metadata={"Software": None})
    plt.close(fig)


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances, where there are enough complete trials to judge."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    varied = {k for t in complete for k in t.params}
    if len(complete) < 3 or not varied:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, evaluator=None))
    except (RuntimeError, ValueError):  # e.g. every complete trial at one point
        return {}


def write_report(
    rows: list[dict[str, Any]], study_name: str, best_samples: dict, weights: dict, out_dir: Path
) -> Path:
    """Write ``out_dir`` (sweep.md, sweep.json and the plots) as a whole; returns sweep.md."""
    best = next((r for r in rows if r["state"] == "complete"), None)
    text = [f"# Sweep {study_name}", "", progress_line(rows), ""]
    if best is not None:
        text += [
            f"Best: trial {best['trial']} ({best['experiment']}), validation loss "
            f"{best['objective']:.4f} nats, with {json.dumps(best['params'])}.",
            "",
        ]
        text += [f"- `{prefix}` -> `{sample}`" for prefix, sample in best_samples.items()]
        text += [""]
    text += [markdown_table(rows)]
    if weights:
        text += [
            "",
            "Parameter importances: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()),
        ]
    with atomic_dir(out_dir) as tmp:
        (tmp / REPORT_MD).write_text("\n".join(text) + "\n")
        (tmp / REPORT_JSON).write_text(
            json.dumps({"study": study_name, "trials": rows}, indent=2, default=str) + "\n"
        )
        _plots(rows, weights, tmp)
    return out_dir / REPORT_MD
