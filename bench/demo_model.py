"""The model a benchmark loads: a registered NAME[:VERSION] or package folder, else the newest finished run of that
name (as `make demo` leaves it), registered on the way."""

from __future__ import annotations


def demo_model(workspace, name: str) -> str:
    from headsmith.errors import HeadsmithError
    from headsmith.models.registry import register_model, resolve_model

    try:
        resolve_model(workspace, name)
    except HeadsmithError:
        runs = sorted((workspace.runs_dir / name).glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SystemExit(f"no model '{name}' and no finished run of that name: run `make demo` first")
        print("registered", *register_model(workspace, runs[-1].parent, name), "from", runs[-1].parent)
    return name
