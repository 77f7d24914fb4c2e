"""Training and tuning from the browser: a recipe and overrides (kept to what a browser may set, then checked as
the CLI checks them: ui/overrides.py), queued and started one at a time as `headsmith train|tune` processes whose
records live in the catalog; each run's page follows it live (its log, its loss and metric curves) and, once done,
shows its metrics, its report, its most confident mistakes (each linking to the dataset row to fix) and registers
its model."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

import pandas as pd
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from headsmith.errors import HeadsmithError
from headsmith.training import runs
from headsmith.ui.overrides import group_options, override_problems
from headsmith.ui.pages import Pages
from headsmith.workspace import Workspace

HEADSMITH = str(Path(sys.executable).with_name("headsmith"))
LOG_LINES = 40
MISTAKES = 20


class Scheduler:
    """Starts queued runs, `parallel` at a time (runs the CLI started count too), as processes of their own
    (a session of their own: stopping one stops its workers), each writing its output to a log file."""

    def __init__(self, workspace: Workspace, parallel: int = 1):
        self.workspace, self.parallel = workspace, parallel
        self.logs = workspace.runs_dir / "app-logs"
        self.wake = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def log(self, run_id: int) -> Path:
        return self.logs / f"{run_id}.log"

    def _loop(self) -> None:
        while True:
            try:
                while len(runs.running(self.workspace)) < self.parallel and (run := runs.next_queued(self.workspace)):
                    self._start(run)
            except Exception as e:  # noqa: BLE001 - a catalog busy for longer than its timeout: try again soon
                print(f"headsmith ui: the run queue: {e}", file=sys.stderr)
            self.wake.wait(1.0)
            self.wake.clear()

    def _start(self, run: dict) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        if not runs.claim(self.workspace, run["id"]):
            return
        environment = {**os.environ, runs.RUN_ID_ENV: str(run["id"]), "HEADSMITH_HOME": str(self.workspace.root),
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "COLUMNS": "120",
                       "PYTHONUNBUFFERED": "1"}
        with open(self.log(run["id"]), "ab") as log:
            process = subprocess.Popen([HEADSMITH, run["kind"], *run["args"]], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=environment, cwd=self.workspace.root,
                                       start_new_session=True)
        runs.mark(self.workspace, run["id"], pid=process.pid)
        threading.Thread(target=self._wait, args=(run["id"], process), daemon=True).start()

    def _wait(self, run_id: int, process: subprocess.Popen) -> None:
        """The process's end, recorded here when it could not record it itself (killed)."""
        runs.ended(self.workspace, run_id, process.wait())
        self.wake.set()

    def stop(self, run_id: int) -> None:
        """A queued run never starts; a running one gets SIGTERM (its whole session, when the app started it)."""
        run = runs.get_run(self.workspace, run_id)
        if run is None:
            raise HeadsmithError(f"no run {run_id}")
        if run["status"] == "queued":
            runs.cancel(self.workspace, run_id)
        elif run["status"] in ("running", "stopping"):
            runs.mark(self.workspace, run_id, status="stopping")
            try:
                if os.getpgid(run["pid"]) == run["pid"]:
                    os.killpg(run["pid"], signal.SIGTERM)
                else:  # started from a terminal: its own process only
                    os.kill(run["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        else:
            raise HeadsmithError(f"run {run_id} is {run['status']}: there is nothing to stop")


def curves(folder: Path | None) -> dict:
    """Loss and metric series from the run's logs/metrics.csv (what Lightning's CSV logger writes as it goes)."""
    path = folder / "logs" / "metrics.csv" if folder else None
    if path is None or not path.is_file():
        return {}
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):  # being written
        return {}
    wanted = [c for c in frame.columns if c in ("train/loss_epoch", "train/loss", "val/loss")
              or (c.startswith("val/") and c.count("/") == 1)]
    series = {}
    for column in wanted:
        points = frame[["epoch", column]].dropna() if "epoch" in frame else pd.DataFrame()
        points = points.groupby("epoch", as_index=False).last() if len(points) else points
        if len(points):
            series[column] = {"x": points["epoch"].tolist(), "y": points[column].round(5).tolist()}
    return series


def tail(path: Path, lines: int = LOG_LINES) -> str:
    """The last lines of a log (progress bars' carriage returns kept to their last state)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in deque(text.splitlines(), maxlen=lines))


def mistakes(folder: Path, limit: int = MISTAKES) -> dict[str, list[dict]]:
    """Per head, the test rows the model got most confidently wrong (from eval/predictions.parquet)."""
    path = folder / "eval" / "predictions.parquet"
    if not path.is_file():
        return {}
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    heads = [n[:-len(":predicted")] for n in names if n.endswith(":predicted")]
    found = {}
    for head in heads:
        frame = pd.read_parquet(path, columns=["row", "input", head, f"{head}:predicted", f"{head}:confidence"])
        wrong = frame[frame[head].notna() & (frame[head] != frame[f"{head}:predicted"])]
        worst = wrong.sort_values(f"{head}:confidence", ascending=False, kind="stable").head(limit)
        found[head] = [{"row": int(r["row"]), "input": str(r["input"]), "label": r[head],
                        "predicted": r[f"{head}:predicted"], "confidence": float(r[f"{head}:confidence"])}
                       for _, r in worst.iterrows()]
    return found


def routes(pages: Pages, scheduler: Scheduler) -> list[Route]:
    workspace, settings = pages.workspace, pages.settings
    # What checking a run's config imports (torch, Lightning, transformers: seconds of CPU), loaded once the runs
    # page is first opened, while the person fills its form: not by every app that never starts a run.
    first_visit = threading.Lock()  # taken once, never released

    def allowed() -> list[Path]:
        return [workspace.root.resolve(), *([settings.data.resolve()] if settings.data else [])]

    def listing(request: Request, form: dict | None = None, problems: dict | None = None,
                status: int = 200) -> Response:
        return pages.render(request, "runs.html", {
            "runs": runs.list_runs(workspace), "recipes": group_options()["recipe"], "form": form or {},
            "problems": problems or {}, "parallel": scheduler.parallel}, status=status)

    def runs_page(request: Request) -> Response:
        if first_visit.acquire(blocking=False):
            threading.Thread(target=importlib.import_module, args=("headsmith.training.validate",), daemon=True).start()
        return listing(request)

    async def start(request: Request) -> Response:
        form = await request.form()
        kind = "tune" if form.get("kind") == "tune" else "train"
        recipe = str(form.get("recipe") or "")
        overrides = [line.strip() for line in str(form.get("overrides") or "").splitlines() if line.strip()]
        args = [f"recipe={recipe}", *overrides] if recipe else overrides
        problems = await run_in_threadpool(override_problems, args, kind, workspace, allowed())
        if problems:
            return await run_in_threadpool(listing, request, {k: str(v) for k, v in form.items()}, problems, 400)
        run_id = runs.queue_run(workspace, kind, args)
        scheduler.wake.set()
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    def run_or_404(request: Request) -> dict | None:
        try:
            return runs.get_run(workspace, int(request.path_params["id"]))
        except ValueError:
            return None

    def progress_of(run: dict) -> dict:
        folder = Path(run["folder"]) if run["folder"] else None
        return {"status": run["status"], "exit_code": run["exit_code"], "log": tail(scheduler.log(run["id"])),
                "curves": curves(folder if run["kind"] == "train" else None),
                "started_at": run["started_at"], "ended_at": run["ended_at"]}

    def run_page(request: Request) -> Response:
        run = run_or_404(request)
        if run is None:
            return pages.render(request, "error.html", {"error": f"no run {request.path_params['id']}"}, status=404)
        folder = Path(run["folder"]) if run["folder"] else None
        context = {"run": run, "progress": progress_of(run), "metrics": None, "mistakes": {}, "trials": None,
                   "dataset": None, "images": False, "registered": request.query_params.get("registered")}
        if folder and run["kind"] == "train" and (folder / "metrics.json").is_file():
            context["metrics"] = json.loads((folder / "metrics.json").read_text())
            context["mistakes"] = mistakes(folder)
            snapshot = _test_snapshot(workspace, folder)
            if snapshot:
                context["dataset"] = snapshot.manifest.source.get("dataset")
                context["images"] = snapshot.manifest.type == "image-classification"
        if folder and run["kind"] == "tune" and (folder / "trials.csv").is_file():
            context["trials"] = pd.read_csv(folder / "trials.csv").to_dict("records")
        return pages.render(request, "run.html", context)

    def progress(request: Request) -> Response:
        run = run_or_404(request)
        return JSONResponse(progress_of(run) if run else {"status": None}, status_code=200 if run else 404)

    async def stop(request: Request) -> Response:
        run_id = int(request.path_params["id"])
        try:
            await run_in_threadpool(scheduler.stop, run_id)
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=409)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    def artifact(request: Request) -> Response:
        """The run's report page or tune plot: files of its folder the app names itself, nothing else."""
        run, name = run_or_404(request), request.path_params["name"]
        files = {"report": ("eval/report.html", "text/html"), "tune.png": ("tune.png", "image/png")}
        path = Path(run["folder"]) / files[name][0] if run and run["folder"] and name in files else None
        if path is None or not path.is_file():
            return Response("404: not there (yet)", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=files[name][1])

    async def register(request: Request) -> Response:
        from headsmith.models.registry import register_model  # torch: imported when a model is registered

        run, form = run_or_404(request), await request.form()
        if run is None or not run["folder"]:
            return pages.render(request, "error.html", {"error": "no such run with a model"}, status=404)
        try:
            name, version = await run_in_threadpool(register_model, workspace, Path(run["folder"]),
                                                    str(form.get("name") or "").strip())
        except HeadsmithError as e:
            return pages.render(request, "error.html", {"error": str(e)}, status=400)
        return RedirectResponse(f"/runs/{run['id']}?registered={name}:{version}", status_code=303)

    def compare_runs(request: Request) -> Response:
        """Test metrics of two finished runs side by side (B - A per head and class): `headsmith compare`'s page."""
        from headsmith.evaluation.compare import compare, load_side, save_comparison

        try:
            pair = [runs.get_run(workspace, int(request.query_params.get(side, ""))) for side in ("a", "b")]
            if not all(run and run["folder"] and (Path(run["folder"]) / "metrics.json").is_file() for run in pair):
                raise HeadsmithError("pick two finished training runs")
            folder = workspace.root / "compare" / f"runs-{pair[0]['id']}-{pair[1]['id']}"
            if not (folder / "compare.html").is_file():
                save_comparison(compare(*(load_side(workspace, run["folder"]) for run in pair)), folder)
        except (ValueError, HeadsmithError) as e:
            return pages.render(request, "error.html", {"error": str(e) if isinstance(e, HeadsmithError)
                                                        else "pick two runs"}, status=400)
        return FileResponse(folder / "compare.html", media_type="text/html")

    return [Route("/runs", runs_page), Route("/runs", start, methods=["POST"]), Route("/runs/compare", compare_runs),
            Route("/runs/{id}", run_page),
            Route("/runs/{id}/progress", progress), Route("/runs/{id}/stop", stop, methods=["POST"]),
            Route("/runs/{id}/register", register, methods=["POST"]), Route("/runs/{id}/files/{name}", artifact)]


def _test_snapshot(workspace: Workspace, folder: Path):
    """The snapshot the run's test rows came from (its dataset is where mistakes are fixed), if it is still there."""
    from headsmith.data.snapshot import load_snapshot

    try:
        return load_snapshot(workspace, json.loads((folder / "eval" / "eval.json").read_text())["snapshot"]["name"])
    except (OSError, KeyError, ValueError, HeadsmithError):
        return None
