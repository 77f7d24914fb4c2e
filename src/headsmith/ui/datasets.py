"""The dataset pages: the list, and one dataset's rows (paged and filtered on the server), its thumbnails, failed
images, label edits (one cell, or a selection at once), deletions, retries and undo, each kept in its history."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from headsmith.data import dataset as datasets
from headsmith.data.media import DamagedBlob, ImageRejected
from headsmith.data.thumbnails import Thumbnails
from headsmith.errors import HeadsmithError, StaleEdit
from headsmith.ui.pages import Pages, local_path

if TYPE_CHECKING:
    from headsmith.ui.imports import Work

PAGE_ROWS, MAX_PAGE_ROWS = 50, 500
HISTORY_SHOWN = 10


def row_filter(query) -> datasets.RowFilter:
    """The filters of a page's address: `class.COLUMN` ("=CLASS", or "-" for unlabelled), `status`, `q`."""
    classes = {}
    for key, value in query.items():
        if key.startswith("class.") and value:
            classes[key[len("class."):]] = "" if value == "-" else value.removeprefix("=")
    return datasets.RowFilter(classes=classes, status=query.get("status") or None, text=query.get("q") or None)


def describe(change: dict) -> str:
    """One line of a dataset's history, for people."""
    action = change["action"]
    if action == "set":
        return f"row {change['row']}: {change['column']} {change['old']!r} \u2192 {change['new']!r}"
    if action == "relabel":
        return f"{len(change['old'])} rows: {change['column']} \u2192 {change['new']!r}"
    if action == "delete_rows":
        rows = change["rows"]
        return f"deleted {len(rows)} row{'s' if len(rows) > 1 else ''} ({', '.join(map(str, rows[:10]))}" + (
            ", ...)" if len(rows) > 10 else ")")
    if action == "undo":
        return f"undid change {change['of']} ({change['undid']})"
    if action in ("import", "add_rows"):
        return f"{action.replace('_', ' ')}: {change['rows']:,} rows from {change['file']}"
    return action


def _number(query, key: str, default: int, most: int | None = None) -> int:
    try:
        value = max(0, int(query.get(key, default)))
    except ValueError:
        return default
    return min(value, most) if most else value


def routes(pages: Pages, work: Work) -> list[Route]:
    workspace = pages.workspace
    thumbnails = Thumbnails(workspace)

    def listing(request: Request) -> Response:
        return pages.render(request, "datasets.html", {"datasets": datasets.list_datasets(workspace)})

    def view(request: Request, name: str, query, error: str | None = None, status: int = 200) -> Response:
        """Dataset `name` as the page address `query` asks (filters, offset); `error`: an edit refused."""
        dataset = datasets.get_dataset(workspace, name)
        limit = _number(query, "limit", PAGE_ROWS, MAX_PAGE_ROWS) or PAGE_ROWS
        target = _number(query, "row", 0)  # a link to one row (from a snapshot, a mistake): the page holding it
        offset = (datasets.row_offset(workspace, name, target) // limit * limit if target
                  else _number(query, "offset", 0))
        where = row_filter(query) if not target else datasets.RowFilter()
        try:
            total, page = datasets.rows_page(workspace, name, limit, offset, where)
        except HeadsmithError as e:  # a filter naming a column the dataset lacks
            error, status = str(e), 400
            total, page = datasets.rows_page(workspace, name, limit, 0)
        kept = [(k, v) for k, v in query.items() if k not in ("offset", "change", "row")]

        def address(**changes) -> str:
            items = [(k, v) for k, v in kept if k not in changes] + [(k, str(v)) for k, v in changes.items()]
            return f"/datasets/{name}?{urlencode(items)}"

        change, recent = _number(query, "change", 0), datasets.history(workspace, name, last=HISTORY_SHOWN)
        return pages.render(request, "dataset.html", {
            "dataset": dataset, "summary": datasets.summary(workspace, name), "total": total, "offset": offset,
            "limit": limit, "rows": page.to_dict("records"), "target": target, "where": where, "error": error,
            "shown": [c for c in dataset.columns if c.type != "ignore"],
            "here": address(offset=offset), "address": address,
            "previous": address(offset=max(0, offset - limit)) if offset else None,
            "next": address(offset=offset + limit) if offset + limit < total else None,
            "history": recent[::-1], "change": next((c for c in recent if c["id"] == change), None),
            "undoable": datasets.UNDOABLE, "describe": describe, "work": work.progress(name)}, status=status)

    def dataset_page(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            datasets.get_dataset(workspace, name)
        except HeadsmithError as e:
            if name in work.state:  # an import under way, or one that failed
                return pages.render(request, "importing.html", {"name": name, "work": work.progress(name)})
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        return view(request, name, request.query_params)

    async def change(request: Request) -> Response:
        """Every edit of the page: `set` a cell of the rows (one, or a selection), `delete` or `fetch` (the images
        again) a selection, `fetch_all`, `undo` a change. Done: back to the page it came from. Refused: that page
        again, as it is now, with the reason."""
        name, form = request.path_params["name"], await request.form()
        back = local_path(str(form.get("back", "")), f"/datasets/{name}")
        action = str(form.get("action", ""))
        rows = [int(r) for r in form.getlist("row") if str(r).isdigit()]
        seen = {row: str(form.get(f"version.{row}", "")) for row in rows}
        try:
            if action == "set":
                done, _, _ = await run_in_threadpool(datasets.set_cells, workspace, name, rows,
                                                     str(form.get("column")), str(form.get("value", "")), seen)
            elif action == "delete":
                done = await run_in_threadpool(datasets.delete_rows, workspace, name, rows, seen)
            elif action == "fetch":  # a selection (a page at most): done before the page comes back
                if not rows:
                    raise HeadsmithError("no rows selected: pick the rows whose images to fetch again")
                await run_in_threadpool(datasets.fetch_media, workspace, name, pages.settings.fetcher(workspace),
                                        rows)
                done = None
            elif action == "fetch_all":  # every image not fetched: in the background, its progress on the page
                work.fetch(name)
                done = None
            elif action == "undo":
                done = await run_in_threadpool(datasets.undo, workspace, name, _number(form, "change", 0))
            else:
                raise HeadsmithError(f"unknown action {action!r}")
        except StaleEdit as e:
            return await run_in_threadpool(view, request, name, _query(back), str(e), 409)
        except HeadsmithError as e:
            return await run_in_threadpool(view, request, name, _query(back), str(e), 400)
        target = back if done is None else _with(back, change=done)
        return RedirectResponse(target, status_code=303)

    def thumbnail(request: Request) -> Response:
        try:
            jpeg = thumbnails.get(request.path_params["sha256"])
        except DamagedBlob as e:
            return Response(f"404: {e}", status_code=404, media_type="text/plain")
        except (ImageRejected, HeadsmithError) as e:
            return Response(f"400: {e}", status_code=400, media_type="text/plain")
        return Response(jpeg, media_type="image/jpeg",  # a blob never changes: neither does its thumbnail
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})

    return [Route("/datasets", listing), Route("/datasets/{name}", dataset_page),
            Route("/datasets/{name}/change", change, methods=["POST"]),
            Route("/thumbnails/{sha256}", thumbnail)]


def _query(address: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(address).query))


def _with(address: str, **params) -> str:
    parts = urlsplit(address)
    items = [(k, v) for k, v in parse_qsl(parts.query) if k not in params] + [(k, str(v)) for k, v in params.items()]
    return f"{parts.path}?{urlencode(items)}"
