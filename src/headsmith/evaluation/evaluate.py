"""Evaluating a model on snapshot rows: scores for every row, then per head and per class metrics, PR curves,
confusion matrices, threshold decisions and per-row predictions, written as eval.json, predictions.parquet,
report.html and PNGs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headsmith.data.snapshot import Snapshot
from headsmith.errors import HeadsmithError
from headsmith.evaluation.metrics import evaluate_head, point_at, thinned
from headsmith.evaluation.thresholds import decide
from headsmith.files import atomic_path, write_atomic
from headsmith.models.net import MultiHeadNet

EVAL_FILE, PREDICTIONS_FILE, REPORT_FILE = "eval.json", "predictions.parquet", "report.html"
PREDICTION_PART_ROWS = 65_536  # rows of predictions.parquet built (their inputs read) at once


def score_rows(net: MultiHeadNet, snapshot: Snapshot, frame: pd.DataFrame, features: torch.Tensor | None = None,
               batch_size: int = 64) -> dict[str, np.ndarray]:
    """Softmax scores per head, one row per row of `frame` (rows of `snapshot`; `position` is their index in it).
    `features`: the frozen backbone's embeddings of the whole snapshot, when cached."""
    description = f"scoring {len(frame)} rows of '{snapshot.manifest.name}'"
    positions = frame["position"].tolist()
    if features is not None:
        scores = net.scores(positions, batch_size, features=features, description=description)
    else:
        scores = net.scores(positions, batch_size, load=lambda batch: snapshot.load_inputs(snapshot.inputs(batch)),
                            description=description)
    return {h: scores[h].numpy() if scores else np.zeros((0, len(net.classes[h]))) for h in net.classes}


def write_parquet_parts(parts, path: Path) -> None:
    """Frames with the same columns written one after another as one Parquet file; a column that is all None in
    the first part (an unlabelled head) is a string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for part in parts:
        if writer is None:
            schema = pa.Schema.from_pandas(part, preserve_index=False)
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema],
                               metadata=schema.metadata)
            writer = pq.ParquetWriter(path, schema)
        writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
    writer.close()


class Evaluation:
    """A model's answers on snapshot rows and what they add up to, head by head (the heads both label)."""

    def __init__(self, net: MultiHeadNet, snapshot: Snapshot, frame: pd.DataFrame, scores: dict[str, np.ndarray],
                 model: dict, split: str):
        self.snapshot, self.frame, self.model, self.split = snapshot, frame.reset_index(drop=True), model, split
        self.classes = {h: net.classes[h] for h in net.classes if h in snapshot.manifest.heads
                        and self.frame[h].notna().any()}
        self.scores = {h: scores[h] for h in self.classes}
        self.thresholds = {h: (getattr(net, "thresholds", {}) or {}).get(h) for h in self.classes}
        self.heads = {}
        for head, classes in self.classes.items():
            unknown = sorted(set(self.frame[head].dropna()) - set(classes))
            if unknown:
                raise HeadsmithError(f"snapshot '{snapshot.manifest.name}' labels head '{head}' with classes the model "
                                 f"does not know: {unknown}; evaluate on a snapshot labelled with {classes}")
            labelled = self.frame[head].notna().to_numpy()
            target = self.frame.loc[labelled, head].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
            self.heads[head] = evaluate_head(self.scores[head][labelled], target, classes)
            for label, threshold in zip(classes, self.threshold_list(head)):
                if threshold is not None:  # the decisions' one-vs-rest precision and recall on these rows
                    curve = self.heads[head]["curves"][label]
                    i = point_at(curve, threshold)
                    self.heads[head]["summary"]["classes"][label]["at_threshold"] = {
                        "threshold": threshold, "precision": float(curve["precision"][i]) if i >= 0 else 0.0,
                        "recall": float(curve["recall"][i]) if i >= 0 else 0.0}

    @property
    def metrics(self) -> dict[str, dict]:
        return {h: result["summary"] for h, result in self.heads.items()}

    def threshold_list(self, head: str) -> list[float | None]:
        chosen = self.thresholds.get(head) or {}
        return [(chosen.get(c) or {}).get("threshold") for c in self.classes[head]]

    def predictions(self, rows=slice(None)) -> pd.DataFrame:
        """One row per evaluated row (or per one of `rows`: positions in `frame`): its label, the top class, the
        threshold decision and every class's score."""
        frame = self.frame.iloc[rows]
        columns = {"row": frame["row"].to_numpy(), "input": self.snapshot.inputs(frame["position"])}
        if "source" in frame:
            columns["source"] = frame["source"].to_numpy()
        for head, classes in self.classes.items():
            scores = self.scores[head][rows]
            _, decided = decide(scores, self.threshold_list(head))
            columns[head] = frame[head].to_numpy()
            columns[f"{head}:predicted"] = [classes[i] for i in scores.argmax(1)]
            columns[f"{head}:decision"] = [classes[i] if i is not None else None for i in decided]
            columns[f"{head}:confidence"] = scores.max(1)
            for i, label in enumerate(classes):
                columns[f"{head}:score:{label}"] = scores[:, i]
        return pd.DataFrame(columns)

    def mistakes(self, head: str, limit: int = 12) -> pd.DataFrame:
        """The labelled rows of `head` the model got wrong, most confident first."""
        classes = self.classes[head]
        target = self.frame[head].map({c: i for i, c in enumerate(classes)}).to_numpy(np.float64)  # NaN: unlabelled
        scores = self.scores[head]
        wrong = np.flatnonzero(~np.isnan(target) & (scores.argmax(1) != target))
        worst = wrong[np.argsort(-scores[wrong].max(1), kind="stable")[:limit]]
        return self.predictions(worst)

    def thinned_curves(self, head: str) -> dict[str, dict]:
        """Each class's PR curve with a bounded number of points (see metrics.thinned), its chosen threshold's kept."""
        chosen = dict(zip(self.classes[head], self.threshold_list(head)))
        return {label: thinned(curve, keep=None if chosen[label] is None else point_at(curve, chosen[label]))
                for label, curve in self.heads[head]["curves"].items()}

    def to_json(self) -> dict:
        """eval.json: metrics (average precision from every point of each curve) and the PR curves, thinned to a
        bounded number of points per class (`points`: how many the whole curve has), the chosen thresholds' kept."""
        curves = {head: self.thinned_curves(head) for head in self.heads}
        return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": self.model,
                "snapshot": self.snapshot.manifest.ref(), "split": self.split, "rows": len(self.frame),
                "metrics": self.metrics, "thresholds": self.thresholds, "curves": curves}

    def save(self, folder: Path | str) -> Path:
        """eval.json, predictions.parquet, report.html and one PR-curve and one confusion-matrix PNG per head."""
        from headsmith.evaluation.plots import save_pngs
        from headsmith.evaluation.report import write_report

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / EVAL_FILE, json.dumps(self.to_json(), indent=1))
        with atomic_path(folder / PREDICTIONS_FILE) as tmp:  # a part at a time: inputs are read for the part only
            write_parquet_parts((self.predictions(slice(start, start + PREDICTION_PART_ROWS))
                                 for start in range(0, max(len(self.frame), 1), PREDICTION_PART_ROWS)), tmp)
        save_pngs(self, folder)
        write_report(self, folder / REPORT_FILE)
        return folder


def evaluate(net: MultiHeadNet, snapshot: Snapshot, frame: pd.DataFrame | None = None,
             features: torch.Tensor | None = None, model: dict | None = None, split: str = "all") -> Evaluation:
    """Evaluate `net` on `frame` (default: every row of the snapshot) for each head both have."""
    if frame is None:
        frame = snapshot.labels()
    heads = [h for h in net.classes if h in snapshot.manifest.heads]
    frame = frame[frame[heads].notna().any(axis=1)] if heads else frame.iloc[:0]
    return Evaluation(net, snapshot, frame, score_rows(net, snapshot, frame, features), model or {}, split)
