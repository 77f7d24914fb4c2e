"""Metrics as a person reads them: tables in a terminal, and report.html."""

from __future__ import annotations

import base64
import io
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from headsmith.files import write_atomic

# Long messages stay on one line, for people and for grep; tables get 120 columns in logs and pipes (not 80).
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 120)
# Errors go to stderr: stdout is what scripts capture (`KEY=$(headsmith deploy keys create ...)`, JSON).
error_console = Console(stderr=True, soft_wrap=True)


def print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False)


def metrics_table(stage: str, head: str, summary: dict) -> Table:
    """Per class and macro; average precision and the threshold decisions' precision/recall when known."""
    table = Table(title=f"{stage} metrics, head '{head}'", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
    values = list(summary["classes"].values())
    metrics = ["precision", "recall", "f1"] + (["average_precision"] if "average_precision" in summary else [])
    thresholded = any("at_threshold" in v for v in values)
    columns = ["class", *metrics, "support"] + (["threshold", "P@thr", "R@thr"] if thresholded else [])
    for column in columns:
        table.add_column(column.replace("average_precision", "AP"), justify="left" if column == "class" else "right",
                         no_wrap=True)
    for label, v in summary["classes"].items():
        at = v.get("at_threshold")
        extra = ([f"{at['threshold']:.3f}", f"{at['precision']:.4f}", f"{at['recall']:.4f}"] if at
                 else ["-"] * 3) if thresholded else []
        table.add_row(label, *(f"{v[m]:.4f}" for m in metrics), str(v["support"]), *extra)
    table.add_section()
    table.add_row("macro", *(f"{summary[m]:.4f}" for m in metrics), str(summary["support"]),
                  *([""] * 3 if thresholded else []), style="bold")
    table.caption = f"balanced accuracy {summary['balanced_accuracy']:.4f}"
    return table


def print_metrics(metrics: dict, stage: str = "test") -> None:
    for head, summary in metrics[stage].items():
        console.print(metrics_table(stage, head, summary))
    sel = metrics["selection"]
    if sel.get("chosen"):
        console.print(f"chosen by {sel['monitor']} ({sel['mode']}) on {metrics['fit']['held_out']} = "
                      f"{sel['best_score']:.4f}: " + ", ".join(f"{h} {c}" for h, c in sel["chosen"].items()),
                      highlight=False)
    elif sel["best_score"] is not None:
        console.print(f"selected epoch {sel['best_epoch']} by {sel['monitor']} ({sel['mode']}) = "
                      f"{sel['best_score']:.4f}")
    for warning in (metrics.get("fit") or {}).get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    console.print(f"model package: {metrics['model']}")
    if metrics.get("report"):
        console.print(f"report: {metrics['report']}")


def print_search(fit: dict, monitor: str) -> None:
    """A solved run's search, one table per head: every setting tried, its held-out score; the chosen one bold."""
    for head, result in fit["heads"].items():
        rows = result["search"]
        fixed = ("head", "score", "fold_std", "iterations", "converged", "chosen")
        params = list(dict.fromkeys(k for row in rows for k in row if k not in fixed))  # C; hidden, dropout, ...
        table = Table(title=f"search, head '{head}': {monitor} on {fit['held_out']}", title_justify="left",
                      box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
        for column in ("head", *params, "score", "± folds", "iterations", "converged"):
            table.add_column(column, justify="left" if column == "head" else "right", no_wrap=True)
        for row in rows:
            table.add_row(row["head"], *("" if row.get(p) is None else f"{row[p]:g}" for p in params),
                          f"{row['score']:.4f}", "" if row["fold_std"] is None else f"{row['fold_std']:.4f}",
                          str(row["iterations"]), "yes" if row["converged"] else "no",
                          style="bold green" if row["chosen"] else None)
        convergence = result["convergence"]
        measure = "max |gradient|" if result["chosen"]["head"] == "linear" else "last relative loss change"
        table.caption = (f"final fit: {convergence['iterations']} iterations, {measure} {convergence['gradient']:.1e}, "
                         f"{'converged' if convergence['converged'] else 'NOT converged'}")
        console.print(table)


# --- report.html: one self-contained page per evaluation (plotly's own JS inlined, no network needed) ---

TEMPLATE = Path(__file__).with_name("report_template.html")


def _thumbnail(path: Path) -> str:
    """A small JPEG of an image, inlined as a data URI."""
    from PIL import Image

    from headsmith.data.media import upright

    image = upright(Image.open(path)).convert("RGB")  # as people see it
    image.thumbnail((96, 96))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def report_data(evaluation) -> dict:
    """What the page draws, as JSON."""
    images = evaluation.snapshot.manifest.type == "image-classification"
    heads = []
    for head, result in evaluation.heads.items():
        chosen = evaluation.thresholds.get(head) or {}
        curves = {label: {**curve, "chosen": (chosen.get(label) or {}).get("threshold")}
                  for label, curve in evaluation.thinned_curves(head).items()}
        mistakes = [{"row": int(r["row"]), "label": r[head], "predicted": r[f"{head}:predicted"],
                     "confidence": round(float(r[f"{head}:confidence"]), 4),
                     "input": (_thumbnail(evaluation.snapshot.blobs.path(r["input"])) if images else r["input"]),
                     "source": r.get("source") if images else None}
                    for _, r in evaluation.mistakes(head).iterrows()]
        heads.append({"name": head, "classes": evaluation.classes[head], "summary": result["summary"],
                      "thresholds": chosen, "curves": curves, "mistakes": mistakes})
    return {"model": evaluation.model, "snapshot": evaluation.snapshot.manifest.ref(), "split": evaluation.split,
            "rows": len(evaluation.frame), "images": images, "heads": heads,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_page(template: Path, data: dict, path: Path) -> Path:
    """A self-contained page: the template with plotly's JS and the data (JSON) inlined, written atomically."""
    from plotly.offline import get_plotlyjs

    # `<` escaped: a text containing "</script>" cannot end the data block early
    payload = json.dumps(data, default=str).replace("<", "\\u003c")
    before, rest = template.read_text().split("/*PLOTLY*/")
    middle, after = rest.split("/*DATA*/")
    return write_atomic(path, before + get_plotlyjs() + middle + payload + after)


def write_report(evaluation, path: Path) -> Path:
    return write_page(TEMPLATE, report_data(evaluation), path)
