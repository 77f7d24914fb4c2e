"""Metrics as a person reads them in a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(soft_wrap=True)  # long messages stay on one line, for people and for grep


def metrics_table(stage: str, head: str, summary: dict) -> Table:
    table = Table(title=f"{stage} metrics, head '{head}'", title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, values in summary["classes"].items():
        table.add_row(label, *(f"{values[m]:.4f}" for m in ("precision", "recall", "f1")), str(values["support"]))
    table.add_section()
    table.add_row("macro", *(f"{summary[m]:.4f}" for m in ("precision", "recall", "f1")), str(summary["support"]),
                  style="bold")
    table.caption = f"balanced accuracy {summary['balanced_accuracy']:.4f}"
    return table


def print_metrics(metrics: dict, stage: str = "test") -> None:
    for head, summary in metrics[stage].items():
        console.print(metrics_table(stage, head, summary))
    sel = metrics["selection"]
    if sel["best_score"] is not None:
        console.print(f"selected epoch {sel['best_epoch']} by {sel['monitor']} ({sel['mode']}) = {sel['best_score']:.4f}")
    console.print(f"model package: {metrics['model']}")
