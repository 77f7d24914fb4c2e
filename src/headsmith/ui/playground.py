"""The playground: try models on sample texts or images, side by side (a model and its base, say). Registered models
by NAME[:VERSION], or the folders `headsmith playground` was started with; the model work is the Predictor's, one
forward pass at a time (torch already uses every core)."""

from __future__ import annotations

import base64
import binascii
import json
import threading
from pathlib import Path
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from headsmith.errors import HeadsmithError
from headsmith.ui.pages import Pages

MAX_INPUTS = 32
MAX_BODY = 32 * 2**20  # base64 images in JSON


def answer(predictors: list, body) -> dict:
    """Every model's answer to the texts or images in `body` ({"texts": [...]} or {"images": [base64, ...]})."""
    kind = predictors[0].kind
    if not isinstance(body, dict):
        raise HeadsmithError('send a JSON object: {"texts": [...]} or {"images": [base64, ...]}')
    inputs = body.get("texts" if kind == "text" else "images")
    if not isinstance(inputs, list) or not inputs:
        raise HeadsmithError(f"this model reads {kind}s: send " + ('{"texts": ["...", ...]}' if kind == "text"
                                                                   else '{"images": ["<base64>", ...]}'))
    if len(inputs) > MAX_INPUTS:
        raise HeadsmithError(f"{len(inputs)} inputs: at most {MAX_INPUTS} at a time in the playground")
    if kind == "text":
        if not all(isinstance(t, str) and t.strip() for t in inputs):
            raise HeadsmithError("every text must be a non-empty string")
    else:
        try:
            inputs = [base64.b64decode(b.split(",", 1)[-1], validate=True) for b in inputs]
        except (binascii.Error, AttributeError, ValueError):
            raise HeadsmithError("images are sent as base64 strings (data: URLs are fine)") from None
    return {"models": [{"model": p.describe(), "results": p.predict(inputs)} for p in predictors]}


async def json_body(request: Request):
    """The request's JSON (None when it is not JSON); a body over the cap is a 413 for the page to show."""
    try:
        return json.loads(await request.body() or b"null")
    except HTTPException as e:
        raise HeadsmithError(e.detail) from None
    except json.JSONDecodeError as e:
        raise HeadsmithError(f"the body is not JSON: {e}") from None


class Models:
    """Predictors opened on first use and kept; refs a browser may name are registered models, and the folders the
    server was started with."""

    def __init__(self, pages: Pages):
        self.pages, self.open = pages, {}
        self.opening, self.scoring = threading.Lock(), threading.Lock()  # one forward pass at a time

    def get(self, refs: list[str]) -> list:
        from headsmith.models.registry import list_models
        from headsmith.predictor import Predictor, open_predictor

        if not refs:
            raise HeadsmithError("name a model: /playground?model=NAME[:VERSION]")
        with self.opening:
            for ref in refs:
                if ref in self.open:
                    continue
                if ref in self.pages.settings.models:  # what `headsmith playground` was started with
                    self.open[ref] = open_predictor(self.pages.workspace, ref)
                    continue
                name, _, version = ref.partition(":")  # from a browser: registered models only, never a folder
                found = [m for m in list_models(self.pages.workspace)
                         if m["name"] == name and (not version or str(m["version"]) == version)]
                if not found:
                    raise HeadsmithError(f"no registered model '{ref}' (NAME[:VERSION])")
                self.open[ref] = Predictor(Path(found[-1]["path"]), name=name, version=found[-1]["version"])
        predictors = [self.open[ref] for ref in refs]
        if len({p.kind for p in predictors}) > 1:
            raise HeadsmithError("models to compare must read the same inputs: "
                                 + ", ".join(f"{p.name} reads {p.kind}s" for p in predictors))
        return predictors


def routes(pages: Pages) -> list[Route]:
    models = Models(pages)

    def refs(request: Request) -> list[str]:
        return [r for r in (*request.query_params.getlist("model"), request.query_params.get("compare")) if r]

    def page(request: Request) -> Response:
        query = urlencode([("model", r) for r in refs(request)])
        return pages.render(request, "playground.html", {
            "title": "Playground: " + " vs ".join(refs(request)),
            "urls": {"models": f"/playground/models?{query}", "predict": f"/playground/predict?{query}"}})

    def described(request: Request) -> Response:
        try:
            return JSONResponse({"models": [p.describe() for p in models.get(refs(request))]})
        except HeadsmithError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    async def predict(request: Request) -> Response:
        try:
            body = await json_body(request)

            def scored() -> dict:
                predictors = models.get(refs(request))
                with models.scoring:
                    return answer(predictors, body)

            return JSONResponse(await run_in_threadpool(scored))
        except HeadsmithError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

    return [Route("/playground", page), Route("/playground/models", described),
            Route("/playground/predict", predict, methods=["POST"])]
