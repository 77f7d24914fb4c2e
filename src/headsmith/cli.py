"""The `headsmith` command."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from headsmith.errors import HeadsmithError
from headsmith.evaluation.report import console

app = typer.Typer(help="Train multi-head moderation classifiers from your own data.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
snapshot_app = typer.Typer(help="Immutable, validated snapshots of labelled data: what training reads.",
                           no_args_is_help=True)
recipe_app = typer.Typer(help="Recipes: whole experiments, selected with `headsmith train recipe=NAME`.",
                         no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(recipe_app, name="recipe")


def user_errors(command):
    """A mistake in the user's input prints its message (no traceback) and exits with status 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeadsmithError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def train(ctx: typer.Context):
    """Train from a recipe: `headsmith train recipe=sentiment trainer.max_epochs=3`; sweeps with `-m`; `--help`."""
    from headsmith.training.train import main

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
    csv: Annotated[Path, typer.Argument(help="CSV file: an input column and one label column per head")],
    name: Annotated[str, typer.Option(help="the snapshot's name, used by recipes (dataset.snapshot=NAME)")],
    input: Annotated[str, typer.Option("--input", help="column holding the text")],
    label: Annotated[list[str], typer.Option("--label", help="HEAD=COLUMN, once per head")],
    type: Annotated[str, typer.Option("--type", help="text-classification")] = "text-classification",
    max_invalid: Annotated[float, typer.Option(help="invalid data criterion: the largest share of invalid rows "
                                                    "that are dropped (and reported) instead of refusing")] = 0.05,
):
    """Validate a CSV and freeze it into an immutable, content-hashed snapshot."""
    from headsmith.data.snapshot import create_snapshot
    from headsmith.workspace import Workspace

    snap = create_snapshot(Workspace(), csv, name=name, input_column=input, labels=_parse_labels(label), type=type,
                           max_invalid=max_invalid)
    _print_manifest(snap.manifest)


def _print_manifest(m) -> None:
    console.print(f"snapshot [bold]{m.name}[/] ({m.id}): {m.type}, {m.rows} rows, input column '{m.input_column}'")
    for head, labels in m.heads.items():
        counts = ", ".join(f"{c}={n}" for c, n in labels.counts.items())
        console.print(f"  head {head} (column '{labels.column}'): {counts}")
    if m.invalid_rows:
        console.print(f"  {len(m.invalid_rows)} invalid rows dropped, e.g. row {m.invalid_rows[0]['row']}: "
                      f"{m.invalid_rows[0]['reason']}")
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
        _print_manifest(snap.manifest)


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


if __name__ == "__main__":
    app()
