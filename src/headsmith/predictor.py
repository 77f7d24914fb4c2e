"""Inference on raw inputs, shared by `headsmith predict`, the playground and the BentoML service (which wraps it:
no BentoML import here). Answers are shaped like a moderation API: per head, per class scores beside the decisions
of the model's thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headsmith.data.media import MediaFetcher, open_image
from headsmith.errors import HeadsmithError
from headsmith.evaluation.thresholds import decide
from headsmith.models.package import load_model


class Predictor:
    """One model package, loaded once. `predict` answers raw inputs; `scores` gives the bare probabilities."""

    def __init__(self, package: Path | str, name: str | None = None, version: int | None = None,
                 batch_size: int = 64):
        self.package = Path(package)
        self.net = load_model(self.package)
        self.kind = self.net.backbone.kind  # "text" or "image"
        self.name, self.version = name or self.package.name, version
        self.batch_size = batch_size
        self.fetcher = MediaFetcher()

    @property
    def heads(self) -> dict[str, list[str]]:
        return self.net.classes

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "kind": self.kind, "path": str(self.package),
                "heads": {h: {"classes": c, "thresholds": {k: (v or {}).get("threshold") for k, v in
                                                           (self.net.thresholds.get(h) or {}).items()}}
                          for h, c in self.heads.items()}}

    def load_images(self, refs: list) -> list[Image.Image]:
        """Images from PIL images, bytes, local paths or URLs (file://, http(s)://), checked like imported ones."""
        images = []
        for ref in refs:
            if isinstance(ref, Image.Image):
                images.append(ref)
                continue
            data = ref if isinstance(ref, (bytes, bytearray)) else self.fetcher.read(str(ref))
            images.append(open_image(bytes(data), self.fetcher.max_pixels).convert("RGB"))
        return images

    @torch.inference_mode()
    def scores(self, inputs: list) -> dict[str, np.ndarray]:
        """Softmax scores per head, one row per input (texts, or images in any form load_images takes)."""
        if not inputs:
            raise HeadsmithError("no inputs: give at least one text or image")
        if self.kind == "image":
            inputs = self.load_images(inputs)
        elif not all(isinstance(x, str) for x in inputs):
            raise HeadsmithError(f"model '{self.name}' reads texts, not images or bytes")
        parts: dict[str, list[np.ndarray]] = {h: [] for h in self.heads}
        for start in range(0, len(inputs), self.batch_size):
            logits = self.net(self.net.backbone.preprocess(inputs[start:start + self.batch_size]))
            for head, values in logits.items():
                parts[head].append(torch.softmax(values.float(), -1).numpy())
        return {h: np.concatenate(p) for h, p in parts.items()}

    def predict(self, inputs: list, heads: list[str] | None = None) -> list[dict]:
        """Per input: {head: {"decision": CLASS or None, "classes": [{class, score, threshold, flagged}, ...]}}."""
        unknown = [h for h in heads or [] if h not in self.heads]
        if unknown:
            raise HeadsmithError(f"unknown head {unknown[0]!r}: model '{self.name}' has {', '.join(self.heads)}")
        scores = self.scores(list(inputs))
        answers: list[dict] = [{} for _ in range(len(inputs))]
        for head in heads or list(self.heads):
            classes = self.heads[head]
            chosen = self.net.thresholds.get(head) or {}
            thresholds = [(chosen.get(c) or {}).get("threshold") for c in classes]
            flagged, decided = decide(scores[head], thresholds)
            for i, answer in enumerate(answers):
                answer[head] = {
                    "decision": classes[decided[i]] if decided[i] is not None else None,
                    "classes": [{"class": c, "score": float(scores[head][i, k]), "threshold": thresholds[k],
                                 "flagged": bool(flagged[i, k])} for k, c in enumerate(classes)],
                }
        return answers


def open_predictor(workspace, ref: str) -> Predictor:
    """A predictor for a registered NAME[:VERSION], a package folder or a run folder."""
    from headsmith.models.registry import model_identity

    path, name, version = model_identity(workspace, ref)
    return Predictor(path, name=name, version=version)
