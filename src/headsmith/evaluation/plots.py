"""PNG versions of a report's plots, for terminals, CI logs and pull requests."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402


def save_pngs(evaluation, folder: Path) -> list[Path]:
    """`pr_HEAD.png` (one curve per class, the chosen threshold marked) and `confusion_HEAD.png` per head."""
    paths = []
    for head, result in evaluation.heads.items():
        figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        for label, curve in result["curves"].items():
            ap = result["summary"]["classes"][label]["average_precision"]
            line, = axes.step(curve["recall"], curve["precision"], where="post", label=f"{label} (AP {ap:.3f})")
            chosen = (evaluation.thresholds.get(head) or {}).get(label) or {}
            if chosen.get("threshold") is not None:
                index = int((curve["thresholds"] >= chosen["threshold"]).sum()) - 1
                if index >= 0:
                    axes.plot(curve["recall"][index], curve["precision"][index], "o", color=line.get_color())
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02),
                 title=f"{head}: precision / recall per class")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        paths.append(_save(figure, folder / f"pr_{head}.png"))

        classes, matrix = evaluation.classes[head], result["summary"]["confusion"]
        size = max(3.5, 0.45 * len(classes) + 2)
        figure, axes = plt.subplots(figsize=(size + 1, size), dpi=110)
        image = axes.imshow(matrix, cmap="Blues")
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                axes.text(j, i, str(count), ha="center", va="center", fontsize=8,
                          color="white" if count > peak / 2 else "black")
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
        axes.set(xlabel="predicted", ylabel="true", title=f"{head}: confusion matrix")
        figure.colorbar(image, ax=axes, fraction=0.046)
        paths.append(_save(figure, folder / f"confusion_{head}.png"))
    return paths


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def save_compare_png(result: dict, path: Path) -> Path:
    """F1 of A and B side by side, per head (macro) and class."""
    rows = [r for r in result["rows"] if r["metric"] == "f1"]
    names = [f"{r['head']}" if r["class"] is None else f"{r['head']}/{r['class']}" for r in rows]
    figure, axes = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 4), dpi=110)
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [r["a"] for r in rows], 0.4, label=f"A: {result['a']['label']}")
    axes.bar([p + 0.2 for p in positions], [r["b"] for r in rows], 0.4, label=f"B: {result['b']['label']}")
    axes.set_xticks(list(positions), names, rotation=45, ha="right", fontsize=8)
    axes.set(ylim=(0, 1), ylabel="F1", title="F1 per head (macro) and class")
    axes.legend(fontsize=7)
    return _save(figure, path)



def save_tune_png(summary, monitor: str, maximize: bool, path: Path) -> Path:
    """Each completed trial's objective in order, the best so far, and where trials were pruned."""
    figure, axes = plt.subplots(figsize=(6.5, 4), dpi=110)
    done = summary[summary["state"] == "complete"]
    axes.plot(done["trial"], done["objective"], "o", label="completed")
    best = done["objective"].cummax() if maximize else done["objective"].cummin()
    axes.step(done["trial"], best, where="post", color="grey", alpha=0.6, label="best so far")
    for i, trial in enumerate(summary.loc[summary["state"] == "pruned", "trial"]):
        axes.axvline(trial, color="tab:red", alpha=0.25, linewidth=3, label="pruned" if i == 0 else None)
    axes.set(xlabel="trial", ylabel=monitor, title="tune: objective per trial")
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return _save(figure, path)
