"""`headsmith compare A B`: the metric differences of two runs, models or evaluations, per head and per class."""

from __future__ import annotations

import json
from pathlib import Path

from headsmith.errors import HeadsmithError
from headsmith.evaluation.evaluate import EVAL_FILE
from headsmith.files import write_atomic
from headsmith.models.package import META_FILE, read_meta
from headsmith.workspace import Workspace

METRICS = ("precision", "recall", "balanced_accuracy", "f1", "average_precision")
TEMPLATE = Path(__file__).with_name("compare_template.html")


def load_side(workspace: Workspace, ref: str) -> dict:
    """Test metrics and the snapshot they were measured on, from a run folder (metrics.json), an evaluation folder
    (eval.json), a model package folder or a registered NAME[:VERSION] (model.json's lineage)."""
    from headsmith.models.registry import model_identity

    path = Path(ref).expanduser()
    if (path / "metrics.json").is_file() and (path / "model" / META_FILE).is_file():
        snapshots = read_meta(path / "model")["lineage"]["snapshots"]
        return {"label": ref, "metrics": json.loads((path / "metrics.json").read_text())["test"],
                "snapshot": snapshots.get("test") or snapshots["train"]}
    if (path / EVAL_FILE).is_file():
        saved = json.loads((path / EVAL_FILE).read_text())
        return {"label": ref, "metrics": saved["metrics"], "snapshot": saved["snapshot"]}
    package, name, version = model_identity(workspace, ref)
    lineage = read_meta(package)["lineage"]
    return {"label": f"{name}:{version}" if version else name, "metrics": lineage["metrics"]["test"],
            "snapshot": lineage["snapshots"].get("test") or lineage["snapshots"]["train"]}


def compare(a: dict, b: dict) -> dict:
    """Rows of (head, class or None for the head's macro values, metric, a, b, b - a) for every head both have."""
    heads = [h for h in a["metrics"] if h in b["metrics"]]
    if not heads:
        raise HeadsmithError(f"{a['label']} and {b['label']} have no head in common "
                             f"({', '.join(a['metrics'])} vs {', '.join(b['metrics'])})")
    rows = []
    for head in heads:
        ma, mb = a["metrics"][head], b["metrics"][head]
        for label in [None, *[c for c in ma["classes"] if c in mb["classes"]]]:
            va, vb = (ma, mb) if label is None else (ma["classes"][label], mb["classes"][label])
            for metric in METRICS:
                if metric in va and metric in vb:
                    rows.append({"head": head, "class": label, "metric": metric, "a": va[metric], "b": vb[metric],
                                 "delta": vb[metric] - va[metric]})
    same = (a["snapshot"] or {}).get("sha256") == (b["snapshot"] or {}).get("sha256")
    return {"a": {k: a[k] for k in ("label", "snapshot")}, "b": {k: b[k] for k in ("label", "snapshot")},
            "same_snapshot": same, "rows": rows}


def save_comparison(result: dict, folder: Path) -> Path:
    """compare.json, compare.html (tables and a chart of F1 per head and class) and compare.png."""
    from headsmith.evaluation.plots import save_compare_png
    from headsmith.evaluation.report import write_page

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "compare.json", json.dumps(result, indent=1))
    write_page(TEMPLATE, result, folder / "compare.html")
    save_compare_png(result, folder / "compare.png")
    return folder / "compare.html"
