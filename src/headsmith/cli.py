"""The `headsmith` command."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from headsmith.errors import HeadsmithError
from headsmith.evaluation.report import console, print_error

app = typer.Typer(help="Train multi-head moderation classifiers from your own data.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
snapshot_app = typer.Typer(help="Immutable, validated snapshots of labelled data: what training reads.",
                           no_args_is_help=True)
recipe_app = typer.Typer(help="Recipes: whole experiments, selected with `headsmith train recipe=NAME`.",
                         no_args_is_help=True)
dataset_app = typer.Typer(help="Datasets: CSVs imported into the workspace, to preview, fix and snapshot.",
                          no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(recipe_app, name="recipe")
model_app = typer.Typer(help="The model registry: named, versioned model packages.", no_args_is_help=True)
deploy_app = typer.Typer(help="Deployments: BentoML services of registered models, with API keys.",
                         no_args_is_help=True)
keys_app = typer.Typer(help="API keys of a deployment: shown once, stored as hashes.", no_args_is_help=True)
deploy_app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.add_typer(deploy_app, name="deploy")


def user_errors(command):
    """A mistake in the user's input prints its message (no traceback) and exits with status 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeadsmithError as e:
            print_error(str(e))
            raise typer.Exit(2) from None
    return wrapper


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
@user_errors
def train(ctx: typer.Context):
    """Train from a recipe: `headsmith train recipe=sentiment trainer.max_epochs=3`; sweeps with `-m`; `--help`."""
    from headsmith.training.command import main
    from headsmith.training.runs import tracked

    with tracked("train", list(ctx.args)):
        main(list(ctx.args))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def tune(ctx: typer.Context):
    """Bayesian search with Optuna: `headsmith tune recipe=sentiment tune.trials=12
    'optimizer.lr=tag(log, interval(1e-4, 1e-1))' head=mlp 'head.hidden=choice(64, 128, 256)'`. Writes each
    trial's run, trials.csv, tune.png and the best trial as a recipe."""
    from headsmith.training.runs import tracked
    from headsmith.training.tune import main

    with tracked("tune", list(ctx.args)):
        main(list(ctx.args))


@app.command("example-data")
@user_errors
def example_data(name: Annotated[str, typer.Argument(help="rotten-tomatoes")],
                 out: Annotated[Path, typer.Argument(help="CSV file to write")]):
    """Write a bundled real dataset as a CSV, the way a team would bring its own."""
    from headsmith.data.examples import EXAMPLES

    if name not in EXAMPLES:
        raise HeadsmithError(f"no example data named '{name}' (choose: {', '.join(EXAMPLES)})")
    console.print(f"wrote {EXAMPLES[name](out)}")


def _parse_labels(labels: list[str]) -> dict[str, str]:
    parsed = {}
    for item in labels:
        head, sep, column = item.partition("=")
        if not sep or not head or not column:
            raise HeadsmithError(f"--label {item}: write it as HEAD=COLUMN, e.g. --label sentiment=label")
        if not head.replace("_", "").replace("-", "").isalnum():
            raise HeadsmithError(f"--label {item}: head names use letters, digits, '_' and '-' only")
        if head in parsed:
            raise HeadsmithError(f"--label {item}: head '{head}' is given twice")
        parsed[head] = column
    return parsed


@snapshot_app.command("create")
@user_errors
def snapshot_create(
    dataset: Annotated[str, typer.Argument(help="the dataset to freeze (headsmith dataset list)")],
    name: Annotated[str, typer.Option(help="the snapshot's name, used by recipes (dataset.snapshot=NAME)")],
    input: Annotated[str, typer.Option("--input", help="the column holding the text or image")],
    label: Annotated[list[str], typer.Option("--label", help="HEAD=COLUMN, once per head")],
    type: Annotated[str, typer.Option("--type", help="text-classification or image-classification")
                    ] = "text-classification",
    max_invalid: Annotated[float, typer.Option(help="invalid data criterion: the largest share of invalid rows "
                                                    "that are dropped (and reported) instead of refusing")] = 0.05,
    backbone: Annotated[Optional[str], typer.Option(help="check texts against this backbone's token limit")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="token limit (default: the backbone's own)")] = None,
):
    """Validate a dataset and freeze it into an immutable, content-hashed snapshot."""
    from headsmith.data.snapshot import create_snapshot
    from headsmith.workspace import Workspace

    snap = create_snapshot(Workspace(), dataset, name=name, input_column=input, labels=_parse_labels(label),
                           type=type, max_invalid=max_invalid, backbone=backbone, max_tokens=max_tokens)
    _print_manifest(snap)


def _print_manifest(snapshot) -> None:
    import itertools

    m = snapshot.manifest
    console.print(f"snapshot [bold]{m.name}[/] ({m.id}): {m.type}, {m.rows} rows, input column '{m.input_column}'")
    for head, labels in m.heads.items():
        counts = ", ".join(f"{c}={n}" for c, n in labels.counts.items())
        console.print(f"  head {head} (column '{labels.column}'): {counts}")
    if m.invalid_rows:
        console.print(f"  {m.invalid_rows} invalid rows dropped:", highlight=False)
        for r in itertools.islice(snapshot.invalid_rows(), 10):
            console.print(f"    row {r['row']}: {r['reason']}", highlight=False)
    conflicts = m.leakage.get("conflicting_duplicates", 0)
    if conflicts:
        console.print(f"  [yellow]leakage:[/] {conflicts} inputs appear more than once with different labels:")
        for c in itertools.islice(snapshot.conflicting_duplicates(), 10):
            console.print(f"    head {c['head']}: rows {c['rows']} say {c['labels']}", highlight=False)
    if m.invalid_rows > 10 or conflicts > 10:
        console.print(f"  every one: {snapshot.path}/*.jsonl", highlight=False)
    console.print(f"  sha256 {m.sha256}")


@snapshot_app.command("list")
@user_errors
def snapshot_list():
    """Every snapshot in the workspace."""
    from headsmith.data.snapshot import list_snapshots
    from headsmith.workspace import Workspace

    table = Table("name", "id", "type", "rows", "created")
    for s in list_snapshots(Workspace()):
        table.add_row(s["name"], s["id"], s["type"], str(s["rows"]), s["created_at"])
    console.print(table)


@snapshot_app.command("show")
@user_errors
def snapshot_show(ref: Annotated[str, typer.Argument(help="snapshot name or id")],
                  format: Annotated[str, typer.Option("--format", help="text or json")] = "text"):
    """A snapshot's manifest: heads, classes and counts, invalid rows, hash (verified)."""
    from headsmith.data.snapshot import load_snapshot
    from headsmith.workspace import Workspace

    snap = load_snapshot(Workspace(), ref)
    if format == "json":
        print(snap.manifest.to_json())
    else:
        _print_manifest(snap)


@recipe_app.command("list")
def recipe_list():
    """Recipes bundled with headsmith and found in HEADSMITH_RECIPES folders."""
    from headsmith.config import register_recipes

    for name, path in register_recipes().items():
        console.print(f"{name}\t{path}", highlight=False)


@recipe_app.command("show")
@user_errors
def recipe_show(name: str, overrides: Annotated[Optional[list[str]], typer.Argument()] = None):
    """The whole config a recipe composes to (with any key=value overrides)."""
    from omegaconf import OmegaConf

    from headsmith.config import compose_train_config

    print(OmegaConf.to_yaml(compose_train_config([f"recipe={name}", *(overrides or [])])))


def _parse_columns(items: list[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        column, sep, kind = item.rpartition("=")
        if not sep or not column:
            raise HeadsmithError(f"--column {item}: write it as COLUMN=TYPE, e.g. --column url=image")
        parsed[column] = kind
    return parsed


def _fetcher(concurrency: int, timeout: float, retries: int):
    from headsmith.data.media import BlobStore, MediaFetcher
    from headsmith.workspace import Workspace

    return MediaFetcher(BlobStore(Workspace().blobs_dir), timeout=timeout, retries=retries, concurrency=concurrency)


def _print_columns(table, columns) -> None:
    from headsmith.data.ingest import stored_classes

    view = Table("column", "type", "why", title=f"columns of {table.path.name} ({table.count} rows)",
                 title_justify="left")
    for c in columns:
        why = c.reason
        if c.type == "label":
            classes = stored_classes(table.label_counts(c.name))
            why += "\nclasses: " + ", ".join(f"{k}={n}" for k, n in classes.most_common()[:20]) + \
                (f", ... ({len(classes)} in all)" if len(classes) > 20 else "")
        view.add_row(c.name, c.type, why)
    console.print(view)


def _print_media(counts: dict[str, int], name: str) -> None:
    if counts:
        console.print("images: " + ", ".join(f"{status} {n}" for status, n in counts.items()), highlight=False)
        if set(counts) - {"ok"}:
            console.print(f"see which failed and why: headsmith dataset show {name} --failed; "
                          f"retry them: headsmith dataset fetch {name}", highlight=False)


FETCH_OPTIONS = {
    "concurrency": typer.Option(help="images fetched at once"),
    "timeout": typer.Option(help="seconds to wait for each image"),
    "retries": typer.Option(help="retries after a timeout or a server error, with backoff"),
}


@dataset_app.command("import")
@user_errors
def dataset_import(
    file: Annotated[Path, typer.Argument(help="CSV: a column of image URLs or text, one label column per head")],
    name: Annotated[str, typer.Option(help="the dataset's name")],
    column: Annotated[Optional[list[str]], typer.Option("--column", help="COL=TYPE to set a column's type "
                                                        "(image, text, json, label, ignore)")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="accept the column types without asking")] = False,
    encoding: Annotated[Optional[str], typer.Option(help="the file's encoding when it is not UTF-8")] = None,
    concurrency: Annotated[int, FETCH_OPTIONS["concurrency"]] = 16,
    timeout: Annotated[float, FETCH_OPTIONS["timeout"]] = 10.0,
    retries: Annotated[int, FETCH_OPTIONS["retries"]] = 2,
):
    """Import a CSV: infer each column's type (confirm or override), store the rows, fetch the images."""
    import sys

    from headsmith.data.dataset import fetch_media, import_dataset, imported_already
    from headsmith.data.ingest import infer_columns, read_table
    from headsmith.workspace import Workspace

    workspace = Workspace()
    overrides = _parse_columns(column or [])
    if imported_already(workspace, name, file, overrides):
        console.print(f"dataset '{name}' was imported from this file already: fetching what is still missing")
        _print_media(fetch_media(workspace, name, _fetcher(concurrency, timeout, retries)), name)
        return
    table = read_table(file, encoding=encoding)
    columns = infer_columns(table, overrides)
    _print_columns(table, columns)
    if not yes:
        if not sys.stdin.isatty():
            raise HeadsmithError("confirm the column types with --yes, or change them with --column COL=TYPE")
        if not typer.confirm("Import with these column types?", default=True):
            raise HeadsmithError("not imported; change types with --column COL=TYPE and run again")
    for note in import_dataset(workspace, name, table, columns):
        console.print(f"  note: {note}", highlight=False)
    console.print(f"dataset [bold]{name}[/]: {table.count} rows imported")
    _print_media(fetch_media(workspace, name, _fetcher(concurrency, timeout, retries)), name)


@dataset_app.command("fetch")
@user_errors
def dataset_fetch(name: str, concurrency: Annotated[int, FETCH_OPTIONS["concurrency"]] = 16,
                  timeout: Annotated[float, FETCH_OPTIONS["timeout"]] = 10.0,
                  retries: Annotated[int, FETCH_OPTIONS["retries"]] = 2,
                  verify: Annotated[bool, typer.Option("--verify", help="re-hash every stored image first and "
                                                       "fetch again those whose stored copy is damaged")] = False):
    """Fetch the images that failed or are missing (an interrupted import resumes here)."""
    from headsmith.data.dataset import fetch_media, verify_media
    from headsmith.workspace import Workspace

    if verify:
        checked, damaged = verify_media(Workspace(), name)
        console.print(f"checked {checked} stored images: {damaged} damaged" + (", fetching them again" if damaged
                                                                                 else ""), highlight=False)
    _print_media(fetch_media(Workspace(), name, _fetcher(concurrency, timeout, retries)), name)


@dataset_app.command("show")
@user_errors
def dataset_show(name: str, rows: Annotated[int, typer.Option(help="rows to show (a page)")] = 10,
                 offset: Annotated[int, typer.Option(help="rows to skip first: the next page starts at "
                                                          "offset + rows")] = 0,
                 failed: Annotated[bool, typer.Option("--failed", help="list only rows whose image failed")] = False,
                 format: Annotated[str, typer.Option("--format", help="text or json")] = "text"):
    """Classes per label column with counts, image statuses, and a page of rows (or of the failed images)."""
    from headsmith.data.dataset import failed_images, get_dataset, rows_page, summary
    from headsmith.workspace import Workspace

    workspace = Workspace()
    dataset = get_dataset(workspace, name)
    counts = summary(workspace, name)
    failed_total, failures = failed_images(workspace, name, limit=rows, offset=offset)
    page = rows_page(workspace, name, limit=rows, offset=offset)[1] if not failed else None
    if format == "json":
        print(json.dumps({"name": name, "rows": counts["rows"], "columns": [c.as_dict() for c in dataset.columns],
                          "classes": counts["classes"], "media": counts["media"], "failed_total": failed_total,
                          "failed": failures, "offset": offset,
                          "preview": None if failed else json.loads(page.drop(columns=["source", "version"]).to_json(
                              orient="records"))}, indent=2, ensure_ascii=False))
        return
    console.print(f"dataset [bold]{name}[/]: {counts['rows']} rows, from {dataset.source}", highlight=False)
    for c in dataset.columns:
        console.print(f"  {c.name}: {c.type} ({c.reason})", highlight=False)
    for column, classes in counts["classes"].items():
        console.print(f"  classes of {column}: " + ", ".join(f"{k}={n}" for k, n in classes.items()), highlight=False)
    _print_media(counts["media"], name)
    total, shown_rows = (failed_total, len(failures)) if failed else (counts["rows"], len(page))
    title = (f"{'rows whose image failed' if failed else 'rows'} {offset + 1}-{offset + shown_rows} of {total}"
             if shown_rows else f"no {'failed ' if failed else ''}rows from offset {offset} (of {total})")
    if failed:
        view = Table("row", "line", "column", "ref", "status", "detail", title=title)
        for f in failures:
            view.add_row(str(f["row"]), str(f["line"]), f["column"], f["ref"], f["status"], f["detail"])
    else:
        shown = [c for c in page.columns
                 if c not in ("source", "line", "version") and not c.endswith((":sha256", ":detail"))]
        view = Table(*shown, title=title)
        for _, r in page.iterrows():
            view.add_row(*(("" if v is None else str(v))[:60] for v in r[shown]))
    console.print(view)
    if offset + shown_rows < total:
        console.print(f"next page: headsmith dataset show {name}{' --failed' if failed else ''} --rows {rows} "
                      f"--offset {offset + rows}", highlight=False)


@dataset_app.command("list")
@user_errors
def dataset_list():
    """Every dataset in the workspace."""
    from headsmith.data.dataset import list_datasets
    from headsmith.workspace import Workspace

    view = Table("name", "rows", "images not ok", "created", "source")
    for d in list_datasets(Workspace()):
        view.add_row(d["name"], str(d["rows"]), str(d["media_not_ok"]), d["created_at"], d["source"])
    console.print(view)


@dataset_app.command("set")
@user_errors
def dataset_set(name: str, row: int, column: str, value: str):
    """Change one cell, e.g. a row's label: headsmith dataset set reviews 12 sentiment positive"""
    from headsmith.data.dataset import set_value
    from headsmith.workspace import Workspace

    old, new = set_value(Workspace(), name, row, column, value)
    console.print(f"row {row}, {column}: {old!r} -> {new!r}", highlight=False)


@dataset_app.command("delete-rows")
@user_errors
def dataset_delete_rows(name: str, rows: Annotated[list[int], typer.Argument(help="row numbers")]):
    """Delete rows (kept in history; snapshots already made keep them)."""
    from headsmith.data.dataset import delete_rows
    from headsmith.workspace import Workspace

    delete_rows(Workspace(), name, rows)
    console.print(f"deleted {len(rows)} rows from '{name}'")


@dataset_app.command("add-rows")
@user_errors
def dataset_add_rows(name: str, file: Path, encoding: Annotated[Optional[str], typer.Option()] = None,
                     concurrency: Annotated[int, FETCH_OPTIONS["concurrency"]] = 16,
                     timeout: Annotated[float, FETCH_OPTIONS["timeout"]] = 10.0,
                     retries: Annotated[int, FETCH_OPTIONS["retries"]] = 2):
    """Add rows from another CSV with the same columns, and fetch their images."""
    from headsmith.data.dataset import add_rows, fetch_media
    from headsmith.data.ingest import read_table
    from headsmith.workspace import Workspace

    added, notes = add_rows(Workspace(), name, read_table(file, encoding=encoding))
    for note in notes:
        console.print(f"  note: {note}", highlight=False)
    console.print(f"added {added} rows to '{name}'")
    _print_media(fetch_media(Workspace(), name, _fetcher(concurrency, timeout, retries)), name)


@dataset_app.command("history")
@user_errors
def dataset_history(name: str):
    """Every change to a dataset, oldest first."""
    from headsmith.data.dataset import history
    from headsmith.workspace import Workspace

    for event in history(Workspace(), name):
        at, action, change = event.pop("at"), event.pop("action"), event.pop("id")
        console.print(f"{change:>5}  {at}  {action}  {json.dumps(event, ensure_ascii=False)}", highlight=False)


@dataset_app.command("undo")
@user_errors
def dataset_undo(name: str, change: Annotated[int, typer.Argument(help="the change's id (first column of "
                                                                   "`headsmith dataset history`)")]):
    """Undo an edit, a relabel or a deletion (refused if its rows changed since)."""
    from headsmith.data.dataset import undo
    from headsmith.workspace import Workspace

    undo(Workspace(), name, change)
    console.print(f"undid change {change} of '{name}'", highlight=False)


@dataset_app.command("delete")
@user_errors
def dataset_delete(name: str, yes: Annotated[bool, typer.Option("--yes", "-y")] = False):
    """Delete a dataset (its snapshots stay)."""
    from headsmith.data.dataset import delete_dataset
    from headsmith.workspace import Workspace

    if not yes and not typer.confirm(f"Delete dataset '{name}'?", default=False):
        raise typer.Exit(1)
    delete_dataset(Workspace(), name)
    console.print(f"deleted dataset '{name}'")


@snapshot_app.command("diff")
@user_errors
def snapshot_diff(a: str, b: str, format: Annotated[str, typer.Option("--format", help="text or json")] = "text"):
    """Rows added and removed from A to B, labels changed, and label counts per head."""
    from headsmith.data.snapshot import diff_snapshots, load_snapshot
    from headsmith.workspace import Workspace

    diff = diff_snapshots(load_snapshot(Workspace(), a), load_snapshot(Workspace(), b))
    if format == "json":
        print(json.dumps(diff, indent=2, ensure_ascii=False))
        return
    console.print(f"{a} -> {b}: {diff['added']} rows added, {diff['removed']} removed, "
                  f"{diff['relabelled']} relabelled", highlight=False)
    for head, counts in diff["heads"].items():
        view = Table("class", a, b, "change", title=f"head {head}", title_justify="left")
        for label, (before, after) in counts.items():
            view.add_row(label, str(before), str(after), f"{after - before:+d}")
        console.print(view)


@model_app.command("register")
@user_errors
def model_register(run: Annotated[Path, typer.Argument(help="a run folder (its model/ is the selection rule's "
                                                             "best checkpoint) or a model package folder")],
                   name: Annotated[str, typer.Option(help="the model's name; each registration is a new version")],
                   force: Annotated[bool, typer.Option(help="register even if it failed its regression gate")] = False):
    """Register a run's model as NAME's next version (refused when its regression gate failed)."""
    from headsmith.models.registry import register_model
    from headsmith.workspace import Workspace

    name, version = register_model(Workspace(), run, name, force=force)
    console.print(f"registered {name}:{version}")


@model_app.command("list")
@user_errors
def model_list():
    """Every registered model version: backbone and heads with their classes."""
    from headsmith.models.registry import list_models
    from headsmith.workspace import Workspace

    view = Table("model", "backbone", "heads", "registered")
    for m in list_models(Workspace()):
        heads = "\n".join(f"{h}: {', '.join(c)}" for h, c in m["heads"].items())
        view.add_row(f"{m['name']}:{m['version']}", m["backbone"], heads, m["created_at"])
    console.print(view)


@model_app.command("show")
@user_errors
def model_show(ref: Annotated[str, typer.Argument(help="NAME[:VERSION] or a package folder")],
               format: Annotated[str, typer.Option("--format", help="text or json")] = "text"):
    """A model's heads, classes, lineage (snapshots, base model, recipe) and metrics."""
    from headsmith.evaluation.report import metrics_table
    from headsmith.models.package import read_meta
    from headsmith.models.registry import resolve_model
    from headsmith.workspace import Workspace

    path = resolve_model(Workspace(), ref)
    meta = read_meta(path)
    if format == "json":
        print(json.dumps(meta, indent=2))
        return
    lineage = meta["lineage"]
    console.print(f"model {ref} ({path})", highlight=False)
    console.print(f"  backbone: {meta['backbone']['pretrained']} ({meta['backbone']['kind']}, "
                  f"{meta['backbone']['out_dim']}-d)", highlight=False)
    plan = (lineage.get("base_model") or {}).get("heads", {})
    branch_of = {h: (name, b["from_block"]) for name, b in meta.get("branches", {}).items() for h in b["heads"]}
    for head, info in meta["heads"].items():
        how = f" [{plan[head]}]" if head in plan else ""
        where = (f" (branch '{branch_of[head][0]}': its own blocks from block {branch_of[head][1]})"
                 if head in branch_of else "")
        console.print(f"  head {head}{how}: {', '.join(info['classes'])}{where}", highlight=False, markup=False)
    snaps = lineage["snapshots"]
    console.print(f"  trained on snapshot {snaps['train']['name']} ({snaps['train']['id']})"
                  + (f", tested on {snaps['test']['name']}" if snaps.get("test") else ""), highlight=False)
    if lineage.get("base_model"):
        console.print(f"  base model: {lineage['base_model']['ref']}", highlight=False)
    for head, summary in lineage["metrics"]["test"].items():
        console.print(metrics_table("test", head, summary))


@app.command("eval")
@user_errors
def eval_command(model: Annotated[str, typer.Argument(help="NAME[:VERSION], a package folder or a run folder")],
                 snapshot: Annotated[str, typer.Argument(help="a snapshot that labels some of the model's heads")],
                 out: Annotated[Optional[Path], typer.Option(help="where to write the evaluation "
                                                                  "(default: <workspace>/evals/...)")] = None,
                 cache: Annotated[bool, typer.Option(help="read/keep the snapshot's embeddings in the "
                                                          "workspace's embedding cache")] = True):
    """Evaluate a model on a snapshot: metrics per head and class, PR curves, confusion matrices, per-row
    predictions (Parquet), report.html and PNGs."""
    from datetime import datetime

    from headsmith.data.snapshot import load_snapshot
    from headsmith.evaluation.evaluate import REPORT_FILE, evaluate
    from headsmith.evaluation.report import metrics_table
    from headsmith.models.package import load_model
    from headsmith.models.registry import model_identity
    from headsmith.training.embedding_cache import EmbeddingCache
    from headsmith.workspace import Workspace

    workspace = Workspace()
    path, name, version = model_identity(workspace, model)
    net, data = load_model(path), load_snapshot(workspace, snapshot)
    shared = [h for h in net.classes if h in data.manifest.heads]
    if not shared:
        raise HeadsmithError(f"snapshot '{data.manifest.name}' labels {', '.join(data.manifest.heads)}, none of "
                             f"model {name}'s heads ({', '.join(net.classes)}): nothing to evaluate")
    features = EmbeddingCache(workspace).features(data, net.backbone) if cache and net.reads_embeddings else None
    label = f"{name}" + (f"-v{version}" if version else "")
    out = out or workspace.root / "evals" / f"{label}--{data.manifest.name}-{datetime.now():%Y%m%d-%H%M%S}"
    result = evaluate(net, data, features=features, split="all rows",
                      model={"name": f"{name}:{version}" if version else name, "path": str(path)})
    result.save(out)
    for head, summary in result.metrics.items():
        console.print(metrics_table(f"{data.manifest.name}", head, summary))
    console.print(f"report: {out / REPORT_FILE}", highlight=False)


@app.command()
@user_errors
def predict(model: Annotated[str, typer.Argument(help="NAME[:VERSION], a package folder or a run folder")],
            inputs: Annotated[list[str], typer.Argument(help="texts, or image paths / URLs for an image model")],
            head: Annotated[Optional[list[str]], typer.Option("--head", help="only these heads")] = None):
    """Score inputs: per head, per class scores and the thresholds' decision, as JSON."""
    from headsmith.predictor import open_predictor
    from headsmith.workspace import Workspace

    predictor = open_predictor(Workspace(), model)
    answers = predictor.predict(inputs, heads=head or None)
    print(json.dumps({"model": {"name": predictor.name, "version": predictor.version},
                      "results": [{"input": i, "heads": a} for i, a in zip(inputs, answers)]},
                     indent=2, ensure_ascii=False))


@app.command()
@user_errors
def score(model: Annotated[str, typer.Argument(help="NAME[:VERSION], a package folder or a run folder")],
          source: Annotated[str, typer.Argument(metavar="INPUT", help="a CSV, Parquet or JSON Lines file (a path or "
                                                                      "an fsspec URL)")],
          out: Annotated[Path, typer.Option("--out", help="a new folder: Parquet parts + _manifest.json")],
          input_column: Annotated[str, typer.Option("--input", help="the column of texts or image URLs")] = "text",
          keep: Annotated[str, typer.Option(help="columns to carry through, e.g. id,created_at")] = "",
          chunk_rows: Annotated[int, typer.Option(help="rows read, scored and written at a time")] = 10_000,
          batch_size: Annotated[int, typer.Option(help="inputs per forward pass")] = 64,
          engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data over an actor pool; "
                                                   "pip install 'headsmith[ray]')")] = "local",
          ray_address: Annotated[Optional[str], typer.Option(help="a running Ray cluster: auto, or "
                                                                  "ray://HOST:10001 (default: a local Ray for the "
                                                                  "job)")] = None,
          workers: Annotated[int, typer.Option(help="--engine ray: actors, each holding the model once")] = 2,
          threads_per_worker: Annotated[int, typer.Option(help="--engine ray: CPU threads of each actor")] = 1):
    """Score every row of a big file with every head: scores, decisions and a status per row, in input order.
    Killed and run again with the same arguments, it goes on where it stopped (with either engine)."""
    from headsmith.engines import RayOptions, stop_ray
    from headsmith.models.registry import model_identity
    from headsmith.predictor import Predictor
    from headsmith.scoring import RayEngine, check_input, job_manifest, score_file
    from headsmith.workspace import Workspace

    if min(chunk_rows, batch_size, workers, threads_per_worker) < 1:
        raise HeadsmithError("--chunk-rows, --batch-size, --workers and --threads-per-worker: whole numbers from 1")
    if engine not in ("local", "ray"):
        raise HeadsmithError(f"--engine {engine}: choose local or ray")
    kept = [name.strip() for name in keep.split(",") if name.strip()]
    check_input(source, list(dict.fromkeys([*kept, input_column])))
    package, name, version = model_identity(Workspace(), model)
    manifest = job_manifest(package, name, version, source, out, input_column, kept, chunk_rows)
    if manifest["done"]:  # this same job finished before: nothing to load or score
        console.print(f"already scored: {manifest['rows']} rows of {source} in {out}", highlight=False)
        return
    predictor = Predictor(package, name=name, version=version)
    predictor.batch_size = batch_size
    ray = (RayEngine(predictor.package, batch_size, RayOptions(ray_address, workers, threads_per_worker))
           if engine == "ray" else None)
    try:
        manifest = score_file(predictor, source, out, input_column, kept, chunk_rows, engine=ray, manifest=manifest)
    finally:
        if ray:
            stop_ray()
    console.print(f"scored {manifest['rows']} rows of {source} with {predictor.name}: {out} "
                  f"({len(manifest['parts'])} parts)", highlight=False)


@app.command()
@user_errors
def playground(model: Annotated[str, typer.Argument(help="NAME[:VERSION], a package folder or a run folder")],
               compare: Annotated[Optional[str], typer.Option(help="a second model to show side by side, e.g. "
                                                                   "the base model")] = None,
               port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: any free port)")] = 8765):
    """A page of the web app to try the model on sample texts or images (and compare it with another model)."""
    from urllib.parse import urlencode

    from headsmith.models.registry import resolve_model
    from headsmith.ui.pages import Settings
    from headsmith.workspace import Workspace

    refs = [model, *([compare] if compare else [])]
    for ref in refs:
        resolve_model(Workspace(), ref)  # refused here, with the registered names, rather than on the page
    _serve_ui(Settings(models=tuple(refs)), "127.0.0.1", port, "playground: {url}",
              "/playground?" + urlencode([("model", r) for r in refs]))


@app.command("ui")
@user_errors
def ui(port: Annotated[int, typer.Option(help="port to listen on")] = 8800,
       host: Annotated[str, typer.Option(help="address to bind; anything but 127.0.0.1 lets other machines reach "
                                              "the app (they still need the token)")] = "127.0.0.1",
       data: Annotated[Optional[Path], typer.Option(help="folder local images are read from (relative paths in "
                                                         "uploaded CSVs resolve against it); no other local file "
                                                         "is read")] = None,
       allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls", help="let image URLs name "
                                                        "127.0.0.1 and private networks")] = False,
       max_upload_mb: Annotated[int, typer.Option(help="largest CSV upload, in MB")] = 512,
       parallel_runs: Annotated[int, typer.Option(help="trainings at once; the others wait in a queue")] = 1):
    """The web app over the workspace, on this machine: open the URL it prints (it carries a fresh token)."""
    from headsmith.ui.pages import Settings

    if data is not None and not data.is_dir():
        raise HeadsmithError(f"--data {data}: no such folder")
    _serve_ui(Settings(data=data.resolve() if data else None, allow_private_urls=allow_private_urls,
                       max_upload_bytes=max_upload_mb << 20, parallel_runs=parallel_runs), host, port,
              "headsmith ui: open {url}/")


def _serve_ui(settings, host: str, port: int, announce: str, path: str = "") -> None:
    """The web app on host:port with a fresh token; `announce` is printed with {url} (and `path`, then the token)."""
    from urllib.parse import quote

    from headsmith.ui.app import LOOPBACK, create_app, new_token, serve
    from headsmith.workspace import Workspace

    token = new_token()
    if host not in LOOPBACK:
        console.print(f"[yellow]warning:[/] bound to {host}: anyone who can reach it and holds the token can train "
                      "and deploy on this machine")
    shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
    app = create_app(Workspace(), token, hosts={host}, settings=settings)

    def listening(bound: int) -> None:
        link = announce.format(url=f"http://{shown}:{bound}") + path
        console.print(f"{link}{'&' if '?' in link else '?'}token={quote(token)}", highlight=False, soft_wrap=True)

    serve(app, host, port, listening)


@app.command("compare")
@user_errors
def compare_command(a: Annotated[str, typer.Argument(help="a run folder, evaluation folder or model (A)")],
                    b: Annotated[str, typer.Argument(help="the same for B")],
                    out: Annotated[Optional[Path], typer.Option(help="where to write compare.html/.png/.json "
                                                                     "(default: <workspace>/compare/...)")] = None):
    """Metric differences (B - A) per head and class, printed and rendered as compare.html and compare.png."""
    from datetime import datetime

    from headsmith.evaluation.compare import compare, load_side, save_comparison
    from headsmith.workspace import Workspace

    workspace = Workspace()
    result = compare(load_side(workspace, a), load_side(workspace, b))
    if not result["same_snapshot"]:
        console.print("[yellow]warning:[/] A and B were measured on different snapshots "
                      f"({result['a']['snapshot']['name']} vs {result['b']['snapshot']['name']}): the differences "
                      "mix model and data", highlight=False)
    for head in dict.fromkeys(r["head"] for r in result["rows"]):
        view = Table("class", "metric", "A", "B", "B - A", title=f"head '{head}': A = {result['a']['label']}, "
                     f"B = {result['b']['label']}", title_justify="left")
        for r in (r for r in result["rows"] if r["head"] == head):
            color = "green" if r["delta"] > 0 else "red" if r["delta"] < 0 else "default"
            view.add_row(r["class"] or "macro", r["metric"], f"{r['a']:.4f}", f"{r['b']:.4f}",
                         f"[{color}]{r['delta']:+.4f}[/]")
        console.print(view)
    out = out or workspace.root / "compare" / f"{datetime.now():%Y%m%d-%H%M%S}"
    console.print(f"compare page: {save_comparison(result, out)}", highlight=False)


@deploy_app.command("create")
@user_errors
def deploy_create(name: Annotated[str, typer.Argument(help="the deployment's name, e.g. production or canary")],
                  model: Annotated[str, typer.Option(help="NAME[:VERSION] (registered), or a package folder")],
                  max_batch_size: Annotated[int, typer.Option(help="adaptive batching: most inputs per "
                                                                   "forward pass")] = 32,
                  max_latency_ms: Annotated[int, typer.Option(help="adaptive batching: longest wait for a "
                                                                   "batch")] = 1000,
                  max_inputs: Annotated[int, typer.Option(help="most inputs in one request")] = 64,
                  max_text_chars: Annotated[int, typer.Option(help="longest text accepted")] = 10_000,
                  allow_urls: Annotated[bool, typer.Option(help="fetch image URLs (public addresses only)")] = False,
                  max_body_mib: Annotated[float, typer.Option(help="largest request body (413 above)")] = 32,
                  max_image_mib: Annotated[float, typer.Option(help="largest image in a request (413 above)")] = 20):
    """Put the model in BentoML's model store, build its Bento, and record the deployment."""
    from headsmith.serving.deploy import create_deployment
    from headsmith.workspace import Workspace

    d = create_deployment(Workspace(), name, model, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms,
                          max_inputs=max_inputs, max_text_chars=max_text_chars, allow_urls=allow_urls,
                          max_body_bytes=int(max_body_mib * 2**20), max_image_bytes=int(max_image_mib * 2**20))
    console.print(f"deployment {name}: model {d['model']} (BentoML model {d['bentoml_model']}), Bento {d['bento']}",
                  highlight=False)
    console.print(f"next: headsmith deploy keys create {name}; headsmith deploy serve {name} --port 3000",
                  highlight=False)


@deploy_app.command("serve")
@user_errors
def deploy_serve(name: str, port: Annotated[int, typer.Option(help="port to listen on")] = 3000,
                 host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] =
                 "127.0.0.1"):
    """Start the deployment with `bentoml serve` in the background and wait until it is ready."""
    from headsmith.serving.deploy import serve_deployment
    from headsmith.workspace import Workspace

    d = serve_deployment(Workspace(), name, port=port, host=host)
    console.print(f"deployment {name} ({d['model']}) ready at {d['url']} (pid {d['pid']}); API docs at "
                  f"{d['url']}/docs.json; headsmith deploy stop {name} stops it", highlight=False)


@deploy_app.command("list")
@user_errors
def deploy_list():
    """Every deployment: model, Bento, status, URL, active keys."""
    from headsmith.serving.deploy import list_deployments
    from headsmith.workspace import Workspace

    view = Table("deployment", "model", "bento", "status", "url", "keys", "created")
    deployments = list_deployments(Workspace())
    for d in deployments:
        view.add_row(d["name"], d["model"], d["bento"], d["status"], d["url"] or "", str(d["keys"]), d["created_at"])
    console.print(view)
    for d in deployments:
        if d["status"] == "stale":
            console.print(f"deployment {d['name']}: stale server record: {d['note']}; `headsmith deploy stop "
                          f"{d['name']}` removes it (nothing is signalled)")


@deploy_app.command("stop")
@user_errors
def deploy_stop(name: str):
    """Stop a running deployment."""
    from headsmith.serving.deploy import get_deployment, stop_deployment
    from headsmith.workspace import Workspace

    workspace = Workspace()
    before = get_deployment(workspace, name)
    if stop_deployment(workspace, name):
        console.print(f"deployment {name}: stopped")
    elif before["status"] == "stale":
        console.print(f"deployment {name}: was not running; {before['note']}: its record is removed, nothing was "
                      "signalled")
    else:
        console.print(f"deployment {name}: was not running")


@deploy_app.command("delete")
@user_errors
def deploy_delete(name: str, yes: Annotated[bool, typer.Option("--yes", "-y")] = False):
    """Stop a deployment and delete its Bento, keys and record (the model stays registered)."""
    from headsmith.serving.deploy import delete_deployment
    from headsmith.workspace import Workspace

    if not yes and not typer.confirm(f"delete deployment {name} and its keys?"):
        raise HeadsmithError("not deleted")
    delete_deployment(Workspace(), name)
    console.print(f"deployment {name} deleted")


@keys_app.command("create")
@user_errors
def keys_create(deployment: str, label: Annotated[str, typer.Option(help="who or what the key is for")] = ""):
    """A new API key for the deployment, shown this once (only its hash is kept)."""
    from headsmith.serving.deploy import create_key
    from headsmith.workspace import Workspace

    key, key_id = create_key(Workspace(), deployment, label)
    console.print(f"key {key_id} for deployment {deployment} (shown once; send it as `Authorization: Bearer KEY`):",
                  highlight=False)
    print(key)


@keys_app.command("list")
@user_errors
def keys_list(deployment: str):
    """The deployment's keys: id, label, when created and revoked (never the keys)."""
    from headsmith.serving.deploy import list_keys
    from headsmith.workspace import Workspace

    view = Table("key id", "label", "created", "revoked")
    for k in list_keys(Workspace(), deployment):
        view.add_row(k["key_id"], k["label"], k["created_at"], k["revoked_at"] or "")
    console.print(view)


@keys_app.command("revoke")
@user_errors
def keys_revoke(deployment: str, key_id: str):
    """Revoke a key: a running deployment refuses it from its next request."""
    from headsmith.serving.deploy import revoke_key
    from headsmith.workspace import Workspace

    revoke_key(Workspace(), deployment, key_id)
    console.print(f"key {key_id} of deployment {deployment} revoked")


if __name__ == "__main__":
    app()
