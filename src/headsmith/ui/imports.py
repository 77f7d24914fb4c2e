"""Importing a CSV from the browser: the upload is kept in the workspace (uploads/ID/), its column types are inferred
and shown with their reasons, a person confirms or changes them, then the rows are imported and the images fetched
in the background while the dataset page shows the progress."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from headsmith.data import dataset as datasets
from headsmith.data.ingest import COLUMN_TYPES, infer_columns, read_table
from headsmith.errors import HeadsmithError
from headsmith.files import write_atomic
from headsmith.ui.pages import Pages

UPLOAD_ID = re.compile(r"[0-9a-f]{16}")
PREVIEW_ROWS = 5


class Work:
    """Dataset work running in the background (an import, a fetch): one at a time per dataset. Its state lives
    here, its results in the catalog (committed as they come), so a server that dies mid-way leaves the dataset
    as the CLI would: an import not made, or images still pending that a new fetch resumes."""

    def __init__(self, pages: Pages):
        self.pages, self.lock, self.state = pages, threading.Lock(), {}

    def start(self, name: str, stage: str, job) -> None:
        with self.lock:
            if self.state.get(name, {}).get("stage") in ("importing", "fetching"):
                raise HeadsmithError(f"dataset '{name}' is {self.state[name]['stage']} already: wait for it to end")
            self.state[name] = {"stage": stage, "error": None}
        threading.Thread(target=self._run, args=(name, job), daemon=True).start()

    def _run(self, name: str, job) -> None:
        try:
            job(lambda stage: self.state[name].update(stage=stage))
            self.state[name].update(stage="done")
        except Exception as e:  # noqa: BLE001 - shown on the dataset's page: the person who started it is there
            self.state[name].update(stage="failed", error=f"{type(e).__name__}: {e}")

    def fetch(self, name: str, rows: list[int] | None = None) -> None:
        workspace, fetcher = self.pages.workspace, self.pages.settings.fetcher(self.pages.workspace)
        self.start(name, "fetching", lambda stage: datasets.fetch_media(workspace, name, fetcher, rows))

    def progress(self, name: str) -> dict:
        """The work's stage, and the dataset's image cells: how many in all, how many still pending."""
        state = dict(self.state.get(name, {"stage": None, "error": None}))
        try:
            media = datasets.summary(self.pages.workspace, name)["media"]
        except HeadsmithError:  # not imported yet
            media = {}
        return {**state, "images": sum(media.values()), "pending": media.get("pending", 0)}


def _upload_folder(pages: Pages, upload: str) -> Path:
    if not UPLOAD_ID.fullmatch(upload):
        raise HeadsmithError(f"no upload '{upload[:40]}'")
    folder = pages.workspace.root / "uploads" / upload
    if not (folder / "upload.json").is_file():
        raise HeadsmithError(f"no upload '{upload}': upload the file again")
    return folder


def _safe_name(filename: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename or "").name).lstrip(".")[:100]
    return name if name.lower().endswith(".csv") else f"{name or 'upload'}.csv"


def keep_upload(pages: Pages, file: UploadFile) -> str:
    """Copy an uploaded CSV into the workspace, check it and infer its columns: the upload's id. The folder
    appears whole or not at all."""
    uploads = pages.workspace.root / "uploads"
    upload = secrets.token_hex(8)
    staging = uploads / f".{upload}"
    staging.mkdir(parents=True)
    try:
        path = staging / _safe_name(file.filename)
        with open(path, "wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        table = read_table(path)
        columns = infer_columns(table)
        write_atomic(staging / "upload.json", json.dumps({
            "file": path.name, "original": file.filename, "rows": table.count, "sha256": datasets.file_sha256(path),
            "columns": [c.as_dict() for c in columns],
            "preview": [cells for _, cells in table.sample[:PREVIEW_ROWS]]}, ensure_ascii=False))
        staging.rename(uploads / upload)
    except HeadsmithError as e:  # named as the person knows the file, not by where this server keeps it
        shutil.rmtree(staging, ignore_errors=True)
        raise HeadsmithError(str(e).replace(str(path), file.filename or path.name)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return upload


def routes(pages: Pages, work: Work) -> list[Route]:
    workspace, settings = pages.workspace, pages.settings

    def form_page(request: Request, error: str | None = None, status: int = 200) -> Response:
        return pages.render(request, "import.html", {"error": error, "settings": settings}, status=status)

    async def upload(request: Request) -> Response:
        """The CSV, as multipart form data (the page sends it with its CSRF token in a header)."""
        async with request.form(max_files=1, max_fields=4) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                return PlainTextResponse("400: choose a CSV file to upload", status_code=400)
            try:
                upload_id = await run_in_threadpool(keep_upload, pages, file)
            except HeadsmithError as e:
                return PlainTextResponse(f"400: {e}", status_code=400)
        return RedirectResponse(f"/datasets/import/{upload_id}", status_code=303)

    def review(request: Request, upload: str, error: str | None = None, chosen: dict | None = None,
               status: int = 200) -> Response:
        try:
            folder = _upload_folder(pages, upload)
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=404)
        meta = json.loads((folder / "upload.json").read_text())
        default = re.sub(r"[^A-Za-z0-9._-]", "-", Path(meta["original"] or "dataset").stem).strip("-._") or "dataset"
        return pages.render(request, "import_review.html", {
            "upload": upload, "meta": meta, "types": COLUMN_TYPES, "chosen": chosen or {}, "error": error,
            "name": (chosen or {}).get("name", default), "settings": settings}, status=status)

    def review_page(request: Request) -> Response:
        return review(request, request.path_params["upload"])

    async def confirm(request: Request) -> Response:
        upload, form = request.path_params["upload"], await request.form()
        chosen = {k: str(v) for k, v in form.items()}
        try:
            folder = _upload_folder(pages, upload)
            meta = json.loads((folder / "upload.json").read_text())
            name = chosen.get("name", "").strip()
            datasets.check_name(name)
            if any(d["name"] == name for d in datasets.list_datasets(workspace)):
                raise HeadsmithError(f"a dataset named '{name}' already exists: pick another name")
            changed = {c["name"]: chosen.get(f"type.{c['name']}", c["type"]) for c in meta["columns"]}
            changed = {column: kind for column, kind in changed.items()
                       if kind != next(c["type"] for c in meta["columns"] if c["name"] == column)}
            table = await run_in_threadpool(read_table, folder / meta["file"])
            columns = infer_columns(table, changed, set_by="set on the import page")
        except HeadsmithError as e:
            return await run_in_threadpool(review, request, upload, str(e), chosen, 400)
        fetcher = settings.fetcher(workspace)

        def job(stage):
            datasets.import_dataset(workspace, name, table, columns, images_folder=settings.data)
            stage("fetching")
            datasets.fetch_media(workspace, name, fetcher)

        try:
            work.start(name, "importing", job)
        except HeadsmithError as e:
            return await run_in_threadpool(review, request, upload, str(e), chosen, 409)
        return RedirectResponse(f"/datasets/{name}", status_code=303)

    def progress(request: Request) -> Response:
        return JSONResponse(work.progress(request.path_params["name"]))

    return [Route("/datasets/import", form_page), Route("/datasets/import", upload, methods=["POST"]),
            Route("/datasets/import/{upload}", review_page),
            Route("/datasets/import/{upload}", confirm, methods=["POST"]),
            Route("/datasets/{name}/progress", progress)]
