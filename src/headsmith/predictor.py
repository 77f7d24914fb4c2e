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


class ModelCard:
    """What a model answers with, from its model.json alone (no weights): heads, classes, thresholds, identity.
    Turns scores into moderation answers; the BentoML API service uses it while a second service holds the
    weights."""

    def __init__(self, meta: dict, name: str, version: int | None = None):
        self.meta, self.name, self.version = meta, name, version
        self.kind = meta["backbone"]["kind"]  # "text" or "image"
        self.heads = {h: v["classes"] for h, v in meta["heads"].items()}
        self.thresholds = {h: [((v.get("thresholds") or {}).get(c) or {}).get("threshold") for c in v["classes"]]
                           for h, v in meta["heads"].items()}

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "heads": {h: {"classes": c, "thresholds": dict(zip(c, self.thresholds[h]))}
                          for h, c in self.heads.items()}}

    def check_heads(self, heads: list[str] | None) -> list[str]:
        unknown = [h for h in heads or [] if h not in self.heads]
        if unknown:
            raise HeadsmithError(f"unknown head {unknown[0]!r}: model '{self.name}' has {', '.join(self.heads)}")
        return list(heads or self.heads)

    def answers(self, scores: dict[str, np.ndarray], heads: list[str] | None = None) -> list[dict]:
        """Per input: {head: {"decision": CLASS or None, "classes": [{class, score, threshold, flagged}, ...]}}."""
        heads = self.check_heads(heads)
        count = len(next(iter(scores.values())))
        answers: list[dict] = [{} for _ in range(count)]
        for head in heads:
            classes, thresholds = self.heads[head], self.thresholds[head]
            values = np.asarray(scores[head])
            flagged, decided = decide(values, thresholds)
            for i, answer in enumerate(answers):
                answer[head] = {
                    "decision": classes[decided[i]] if decided[i] is not None else None,
                    "classes": [{"class": c, "score": float(values[i, k]), "threshold": thresholds[k],
                                 "flagged": bool(flagged[i, k])} for k, c in enumerate(classes)],
                }
        return answers


class Predictor:
    """One model package, loaded once. `predict` answers raw inputs; `scores` gives the bare probabilities."""

    def __init__(self, package: Path | str, name: str | None = None, version: int | None = None,
                 batch_size: int = 64):
        self.package = Path(package)
        self.net = load_model(self.package)
        self.card = ModelCard(self.net.meta, name or self.package.name, version)
        self.name, self.version, self.kind = self.card.name, version, self.card.kind
        self.batch_size = batch_size
        self.fetcher = MediaFetcher()

    def describe(self) -> dict:
        return {**self.card.describe(), "path": str(self.package)}

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
        return {head: scores.numpy() for head, scores in self.net.scores(inputs, self.batch_size).items()}

    def predict(self, inputs: list, heads: list[str] | None = None) -> list[dict]:
        """Per input: {head: {"decision": CLASS or None, "classes": [{class, score, threshold, flagged}, ...]}}."""
        heads = self.card.check_heads(heads)  # before any model work
        return self.card.answers(self.scores(list(inputs)), heads)


def open_predictor(workspace, ref: str) -> Predictor:
    """A predictor for a registered NAME[:VERSION], a package folder or a run folder."""
    from headsmith.models.registry import model_identity

    path, name, version = model_identity(workspace, ref)
    return Predictor(path, name=name, version=version)
