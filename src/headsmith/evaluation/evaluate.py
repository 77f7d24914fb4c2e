"""Evaluating a network on a snapshot, head by head, with the same metrics training logs."""

from __future__ import annotations

import torch

from headsmith.data.snapshot import Snapshot
from headsmith.evaluation.metrics import head_metrics, summarize
from headsmith.models.net import MultiHeadNet


@torch.inference_mode()
def evaluate(net: MultiHeadNet, snapshot: Snapshot, heads: list[str], batch_size: int = 64) -> dict[str, dict]:
    """Metrics for each of `heads` that both the network and the snapshot have, over the rows that label it."""
    heads = [h for h in heads if h in net.classes and h in snapshot.manifest.heads]
    frame = snapshot.frame()
    metrics = {h: head_metrics(len(net.classes[h])) for h in heads}
    seen: set[str] = set()
    was_training = net.training
    net.eval()
    for start in range(0, len(frame), batch_size):
        rows = frame.iloc[start:start + batch_size]
        logits = net(net.backbone.preprocess(snapshot.load_inputs(rows["input"].tolist())))
        for head in heads:
            index = {c: i for i, c in enumerate(net.classes[head])}
            labelled = rows[head].notna().to_numpy()
            if labelled.any():
                target = torch.tensor([index[c] for c in rows[head][labelled]])
                metrics[head].update(logits[head][torch.from_numpy(labelled)], target)
                seen.add(head)
    net.train(was_training)
    return {h: summarize(m.compute(), net.classes[h]) for h, m in metrics.items() if h in seen}
