"""The BentoML service of a deployment: HTTP, input checks and API keys over headsmith's predictor.

Two services in one Bento: `Moderation` is the public API (it checks every input and shapes the answers from the
model card, so a bad request never reaches the model); `Scorer` holds the weights behind one batchable method, so
BentoML's adaptive batching merges concurrent requests into one forward pass. Arguments are fixed when the Bento is
built (`headsmith deploy create`) and can be overridden at serve time (`bentoml serve BENTO --arg key=value`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import BaseModel
from starlette.responses import Response

from headsmith.data.media import MAX_PIXELS, ImageRejected, MediaFetcher, open_image
from headsmith.errors import HeadsmithError
from headsmith.models.package import read_meta
from headsmith.predictor import ModelCard, Predictor
from headsmith.serving.auth import APIKeyMiddleware
from headsmith.serving.http import ErrorShape, RequestLimits, error_body


class ServiceArgs(BaseModel):
    model: str                      # the BentoML model tag holding the model package
    name: str                       # the model's name and version, as answers report them
    version: int | None = None
    max_batch_size: int = 32        # adaptive batching: most inputs in one forward pass
    max_latency_ms: int = 1000      # and the longest a request may wait for its batch (then: 503, overloaded)
    max_inputs: int = 64            # per request
    max_text_chars: int = 10_000    # per text
    max_pixels: int = MAX_PIXELS    # per image, checked from the header before decoding
    allow_urls: bool = False        # fetch image URLs (public addresses only)
    max_body_bytes: int = 32 * 2**20   # per request, counted as it arrives (413 above it)
    max_image_bytes: int = 20 * 2**20  # per image: uploaded, base64 or fetched


args = bentoml.use_arguments(ServiceArgs)


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(message)  # HTTP 400 with the message


def _overloaded() -> Response:
    """503 with its reason and when to retry (BentoML's own 503 body says only "unexpected error")."""
    message = (f"overloaded: the model could not take this request within max_latency_ms={args.max_latency_ms}; "
               "retry in a moment, or scale the deployment out")
    return Response(error_body(503, message), status_code=503, media_type="application/json",
                    headers={"Retry-After": "1"})


@bentoml.service(name="headsmith-scorer", workers=1, logging={"access": {"enabled": False}})  # internal calls
class Scorer:
    """The weights: texts, or checked image bytes (base64), in; softmax scores per head out."""

    model = bentoml.models.BentoModel(args.model)

    def __init__(self) -> None:
        self.predictor = Predictor(self.model.path, name=args.name, version=args.version)

    @bentoml.api(batchable=True, max_batch_size=args.max_batch_size, max_latency_ms=args.max_latency_ms)
    def scores(self, inputs: list[str]) -> list[dict[str, list[float]]]:
        if self.predictor.kind == "image":
            inputs = [base64.b64decode(x) for x in inputs]
        scores = self.predictor.scores(inputs)
        return [{h: v[i].tolist() for h, v in scores.items()} for i in range(len(inputs))]


# Handlers are async: while one waits for the scorer, the event loop takes in the next requests, which the scorer
# batches together. Blocking work (image checks, URL fetches) runs in a worker thread.
# The access log leaves out the request's Content-Type and Content-Length: BentoML decodes them as UTF-8 while it
# answers, and a client's byte that is not would break the answer off.
@bentoml.service(name="headsmith", workers=1,
                 logging={"access": {"request_content_type": False, "request_content_length": False}})
class Moderation:
    """Classify texts or images: per head, per class scores beside the model's threshold decisions."""

    scorer = bentoml.depends(Scorer)
    model = bentoml.models.BentoModel(args.model)

    def __init__(self) -> None:
        self.card = ModelCard(read_meta(self.model.path), args.name, args.version)
        self.fetcher = MediaFetcher(timeout=5.0, retries=0, max_pixels=args.max_pixels, follow_redirects=False,
                                    public_only=True, local_files=False, max_bytes=args.max_image_bytes)
        # BentoML 1.4's client to a dependency replaces its HTTP session every 100 calls and closes the old one with
        # calls still in flight (bentoml/BentoML#5540, #5544), which under load fails or repeats a share of them.
        # The scorer runs beside this service: one session, kept.
        sessions = getattr(self.scorer.to_async, "_session_manager", None)
        if sessions is not None:
            sessions.max_requests = sessions.max_age = math.inf

    async def _answer(self, inputs: list[str], heads: list[str] | None) -> dict | Response:
        try:
            heads = self.card.check_heads(heads)
        except HeadsmithError as e:
            raise _bad(str(e)) from None
        try:
            rows = await self._scores(inputs)
        except ServiceUnavailable:  # the scorer's batching could not take it within max_latency_ms
            return _overloaded()
        scores = {h: np.array([r[h] for r in rows]) for h in self.card.heads}
        return {"model": {"name": self.card.name, "version": self.card.version},
                "results": self.card.answers(scores, heads)}

    async def _scores(self, inputs: list[str]) -> list[dict]:
        """Scoring is idempotent, so a call lost to a keep-alive connection that the scorer closed as it was reused
        (idle past its keep-alive timeout) is simply made again, once."""
        import aiohttp

        try:
            return await self.scorer.to_async.scores(inputs)
        except aiohttp.ClientConnectionError:
            return await self.scorer.to_async.scores(inputs)

    def _count(self, n: int, fields: str) -> None:
        if n == 0:
            raise _bad(f"no inputs: send at least one in {fields}")
        if n > args.max_inputs:
            raise _bad(f"{n} inputs in one request: at most {args.max_inputs} (split the request)")

    def _kind(self, kind: str) -> None:
        if self.card.kind != kind:
            raise _bad(f"model {self.card.name} reads {self.card.kind}s: use /v1/classify/{self.card.kind}")

    def _image(self, data: bytes, where: str) -> str:
        try:
            open_image(data, args.max_pixels)
        except ImageRejected as e:
            raise _bad(f"{where}: {e.detail}") from None
        return base64.b64encode(data).decode()

    @bentoml.api(route="/v1/classify/text")
    async def classify_text(self, texts: list[str], heads: list[str] | None = None) -> dict:
        """Classify texts. `heads` limits the answer to some heads."""
        self._kind("text")
        self._count(len(texts), "`texts`")
        for i, text in enumerate(texts):
            if not text.strip():
                raise _bad(f"texts[{i}] is empty")
            if len(text) > args.max_text_chars:
                raise _bad(f"texts[{i}] has {len(text):,} characters: at most {args.max_text_chars:,}")
        return await self._answer(texts, heads)

    @bentoml.api(route="/v1/classify/image")
    async def classify_image(self, images: list[str] = [], urls: list[str] = [],  # noqa: B006 (pydantic copies)
                             heads: list[str] | None = None) -> dict:
        """Classify images sent as base64 strings (`images`), or fetched from `urls` when the deployment allows."""
        return await self._answer(await asyncio.to_thread(self._checked_images, images, urls), heads)

    def _checked_images(self, images: list[str], urls: list[str]) -> list[str]:
        self._kind("image")
        self._count(len(images) + len(urls), "`images` (base64) or `urls`")
        if urls and not args.allow_urls:
            raise _bad("image URLs are not enabled for this deployment: send the images (base64 or multipart), or "
                       "create the deployment with --allow-urls")
        checked = []
        for i, text in enumerate(images):
            try:
                data = base64.b64decode(text.split(",", 1)[-1], validate=True)
            except (binascii.Error, ValueError):
                raise _bad(f"images[{i}] is not base64") from None
            checked.append(self._image(data, f"images[{i}]"))
        for i, url in enumerate(urls):
            try:
                data = self.fetcher.read(url)
            except HeadsmithError as e:
                raise _bad(f"urls[{i}]: {e}") from None
            checked.append(self._image(data, f"urls[{i}]"))
        return checked

    @bentoml.api(route="/v1/classify/image/upload")
    async def classify_upload(self, files: list[Path], heads: list[str] | None = None) -> dict:
        """Classify images uploaded as multipart/form-data files (field `files`)."""
        return await self._answer(await asyncio.to_thread(self._checked_uploads, files), heads)

    def _checked_uploads(self, files: list[Path]) -> list[str]:
        self._kind("image")
        self._count(len(files), "`files` (multipart)")
        return [self._image(Path(f).read_bytes(), f"files[{i}]") for i, f in enumerate(files)]

    @bentoml.api(route="/v1/model")
    def model_card(self) -> dict:
        """The deployed model: name, version, heads, classes and thresholds."""
        return self.card.describe()


# Outermost first: errors reshaped, then the key checked before any body is read, then the body counted.
Moderation.add_asgi_middleware(ErrorShape)
Moderation.add_asgi_middleware(APIKeyMiddleware)
Moderation.add_asgi_middleware(RequestLimits, max_body=args.max_body_bytes, max_image=args.max_image_bytes)
