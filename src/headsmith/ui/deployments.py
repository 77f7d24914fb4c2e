"""The model registry with its lineage (snapshot -> run -> model -> deployments), and deployments: created, served,
stopped, deleted; their API keys (a new one shown once, revoked); a playground that asks a running deployment
through this server with a key the app holds for itself (the browser never sees it)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from headsmith.errors import HeadsmithError
from headsmith.serving import deploy
from headsmith.ui.pages import Pages
from headsmith.ui.playground import json_body

APP_KEY_LABEL = "headsmith ui playground"


class AppKeys:
    """One key per deployment, held in this process only; a new app revokes the keys an earlier one held."""

    def __init__(self, pages: Pages):
        self.pages, self.keys, self.lock = pages, {}, threading.Lock()

    def key(self, name: str) -> str:
        with self.lock:
            if name not in self.keys:
                for old in deploy.list_keys(self.pages.workspace, name):
                    if old["label"] == APP_KEY_LABEL and not old["revoked_at"]:
                        deploy.revoke_key(self.pages.workspace, name, old["key_id"])
                self.keys[name] = deploy.create_key(self.pages.workspace, name, APP_KEY_LABEL)[0]
            return self.keys[name]

    def ask(self, name: str, path: str, body: dict) -> dict:
        """The running deployment's answer to `body` on `path` (its error, said as it said it)."""
        deployment = deploy.get_deployment(self.pages.workspace, name)
        if deployment["status"] != "running":
            raise HeadsmithError(f"deployment '{name}' is {deployment['status']}: serve it first")
        request = urllib.request.Request(deployment["url"] + path, data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.key(name)}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise HeadsmithError(f"the deployment answered {e.code}: {detail}") from None
        except OSError as e:
            raise HeadsmithError(f"deployment '{name}' did not answer: {e}") from None


def lineage(workspace, models: list[dict], deployments: list[dict]) -> list[dict]:
    """Each registered model with where it came from (its snapshots, its base model, the run folder) and where it
    is deployed."""
    from headsmith.models.package import read_meta

    for model in models:
        meta = read_meta(model["path"]).get("lineage") or {}
        model["snapshots"] = meta.get("snapshots") or {}
        model["base"] = (meta.get("base_model") or {}).get("ref")
        model["test_f1"] = {h: m.get("f1") for h, m in ((meta.get("metrics") or {}).get("test") or {}).items()}
        model["deployments"] = [d["name"] for d in deployments
                                if d["model"] in (f"{model['name']}:{model['version']}", model["path"])]
    return models


def routes(pages: Pages) -> list[Route]:
    workspace = pages.workspace
    keys = AppKeys(pages)

    def models_page(request: Request) -> Response:
        from headsmith.models.registry import list_models

        deployments = deploy.list_deployments(workspace)
        return pages.render(request, "models.html", {"models": lineage(workspace, list_models(workspace),
                                                                       deployments)})

    def listing(request: Request, error: str | None = None, status: int = 200, form: dict | None = None) -> Response:
        from headsmith.models.registry import list_models

        return pages.render(request, "deployments.html", {
            "deployments": deploy.list_deployments(workspace), "models": list_models(workspace), "error": error,
            "form": form or {}}, status=status)

    def deployments_page(request: Request) -> Response:
        return listing(request)

    async def create(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        name = form.get("name", "").strip()
        try:
            if not form.get("model") or "/" in form["model"]:  # registered models only, from a browser
                raise HeadsmithError("pick a registered model")
            await run_in_threadpool(deploy.create_deployment, workspace, name, form["model"],
                                    allow_urls=form.get("allow_urls") == "on")
        except HeadsmithError as e:
            return await run_in_threadpool(listing, request, str(e), 400, form)
        return RedirectResponse(f"/deployments/{name}", status_code=303)

    def page(request: Request, name: str, new_key: tuple[str, str] | None = None, error: str | None = None,
             status: int = 200) -> Response:
        try:
            deployment = deploy.get_deployment(workspace, name)
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        return pages.render(request, "deployment.html", {
            "d": deployment, "keys": deploy.list_keys(workspace, name), "new_key": new_key, "error": error,
            "app_key_label": APP_KEY_LABEL, "bentoml_home": workspace.root / "bentoml",
            "urls": {"models": f"/deployments/{name}/card", "predict": f"/deployments/{name}/ask"},
            "title": f"Ask deployment {name}"}, status=status)

    def deployment_page(request: Request) -> Response:
        return page(request, request.path_params["name"])

    async def action(request: Request) -> Response:
        """serve (on a port), stop, delete, key (a new one, shown once on the page that comes back), revoke."""
        name, what = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        try:
            if what == "serve":
                port = int(str(form.get("port") or 3000))
                await run_in_threadpool(deploy.serve_deployment, workspace, name, port=port)
            elif what == "stop":
                await run_in_threadpool(deploy.stop_deployment, workspace, name)
            elif what == "delete":
                await run_in_threadpool(deploy.delete_deployment, workspace, name)
                return RedirectResponse("/deployments", status_code=303)
            elif what == "key":
                new_key = await run_in_threadpool(deploy.create_key, workspace, name, str(form.get("label") or ""))
                return await run_in_threadpool(page, request, name, new_key)  # shown this once: never redirected
            elif what == "revoke":
                await run_in_threadpool(deploy.revoke_key, workspace, name, str(form.get("key_id") or ""))
            else:
                return Response("404: no such action", status_code=404, media_type="text/plain")
        except ValueError:
            return await run_in_threadpool(page, request, name, None, "the port is a number", 400)
        except HeadsmithError as e:
            return await run_in_threadpool(page, request, name, None, str(e), 400)
        return RedirectResponse(f"/deployments/{name}", status_code=303)

    def card(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = keys.ask(name, "/v1/model", {})
        except HeadsmithError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"models": [{**model, "path": f"deployment {name}"}]})

    async def ask(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            body = await json_body(request)
            model = await run_in_threadpool(keys.ask, name, "/v1/model", {})
            inputs = {"texts": body.get("texts")} if model["kind"] == "text" else {"images": body.get("images")}
            answer = await run_in_threadpool(keys.ask, name, f"/v1/classify/{model['kind']}", inputs)
        except (HeadsmithError, AttributeError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"models": [{"model": {**model, "path": f"deployment {name}"},
                                         "results": answer["results"]}]})

    return [Route("/models", models_page), Route("/deployments", deployments_page),
            Route("/deployments", create, methods=["POST"]), Route("/deployments/{name}", deployment_page),
            Route("/deployments/{name}/card", card), Route("/deployments/{name}/ask", ask, methods=["POST"]),
            Route("/deployments/{name}/{action}", action, methods=["POST"])]

