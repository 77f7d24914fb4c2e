"""The snapshot pages: the list, one snapshot (heads and classes, the rows left out and why, conflicting duplicates,
each linking to its dataset row), a diff of two, and a snapshot made from a dataset with the reasons it is refused."""

from __future__ import annotations

import itertools

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from headsmith.data import dataset as datasets
from headsmith.data.snapshot import SNAPSHOT_TYPES, create_snapshot, diff_snapshots, list_snapshots, load_snapshot
from headsmith.errors import HeadsmithError
from headsmith.ui.pages import Pages

LISTED = 50  # invalid rows and conflicting duplicates shown on a snapshot's page


def routes(pages: Pages) -> list[Route]:
    workspace = pages.workspace

    def listing(request: Request) -> Response:
        snapshots = list_snapshots(workspace)
        return pages.render(request, "snapshots.html", {"snapshots": snapshots,
                                                        "datasets": datasets.list_datasets(workspace)})

    def new_form(request: Request, form: dict, error: str | None = None, status: int = 200,
                 picked: list[str] | None = None) -> Response:
        """The form for a snapshot of `form["dataset"]`; `picked`: the label columns ticked (default: all)."""
        try:
            dataset = datasets.get_dataset(workspace, form.get("dataset", ""))
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        inputs = [c for c in dataset.columns if c.type in ("text", "image")]
        return pages.render(request, "snapshot_new.html", {
            "dataset": dataset, "inputs": inputs, "labels": dataset.of_type("label"), "form": form,
            "error": error, "types": SNAPSHOT_TYPES,
            "picked": dataset.of_type("label") if picked is None else picked,
            "classes": datasets.summary(workspace, dataset.name)["classes"]}, status=status)

    def new_page(request: Request) -> Response:
        return new_form(request, dict(request.query_params))

    async def create(request: Request) -> Response:
        form = await request.form()
        fields = {k: str(v) for k, v in form.items()}
        picked = [column for column in form.getlist("label") if isinstance(column, str)]
        heads = {str(form.get(f"head.{column}") or column).strip(): column for column in picked}
        try:
            dataset = datasets.get_dataset(workspace, fields.get("dataset", ""))
            input_column = fields.get("input", "")
            kind = "image-classification" if dataset.column(input_column).type == "image" else "text-classification"
            max_invalid = float(fields.get("max_invalid") or 0.05)
            max_tokens = int(fields["max_tokens"]) if fields.get("max_tokens") else None
            snapshot = await run_in_threadpool(
                create_snapshot, workspace, dataset.name, name=fields.get("name", "").strip(),
                input_column=input_column, labels=heads, type=kind, max_invalid=max_invalid,
                backbone=fields.get("backbone") or None, max_tokens=max_tokens)
        except ValueError as e:
            return await run_in_threadpool(new_form, request, fields, f"not a number: {e}", 400, picked)
        except HeadsmithError as e:
            return await run_in_threadpool(new_form, request, fields, str(e), 400, picked)
        return RedirectResponse(f"/snapshots/{snapshot.manifest.name}", status_code=303)

    def snapshot_page(request: Request) -> Response:
        try:
            snapshot = load_snapshot(workspace, request.path_params["name"])
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        return pages.render(request, "snapshot.html", {
            "snapshot": snapshot, "m": snapshot.manifest, "dataset": snapshot.manifest.source.get("dataset"),
            "invalid": list(itertools.islice(snapshot.invalid_rows(), LISTED)),
            "conflicts": list(itertools.islice(snapshot.conflicting_duplicates(), LISTED)),
            "snapshots": list_snapshots(workspace)})

    def diff_page(request: Request) -> Response:
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        try:
            diff = diff_snapshots(load_snapshot(workspace, a), load_snapshot(workspace, b))
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        return pages.render(request, "snapshot_diff.html", {"diff": diff})

    return [Route("/snapshots", listing), Route("/snapshots/new", new_page),
            Route("/snapshots/new", create, methods=["POST"]), Route("/snapshots/diff", diff_page),
            Route("/snapshots/{name}", snapshot_page)]
