"""Errors a user can act on. The CLI prints their message and exits with status 2, without a traceback."""


class HeadsmithError(Exception):
    """A mistake in the user's input (file, column, config key) with a message that says how to fix it."""


class ConfigError(HeadsmithError):
    """One or more recipe/config mistakes, all reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the config has {} problem{}:\n".format(len(problems), "" if len(problems) == 1 else "s")
                         + "\n".join(f"  - {p}" for p in problems))


class SnapshotError(HeadsmithError):
    """A snapshot cannot be created or loaded."""


class DatasetError(HeadsmithError):
    """A CSV cannot be imported, or a dataset edit is not possible."""


class StaleEdit(DatasetError):
    """An edit made from a view of rows that changed since (another tab, the CLI): nothing was changed.
    `current`: each changed row's cells as they are now (None: the row is gone)."""

    def __init__(self, dataset: str, current: dict[int, dict | None]):
        self.current = current
        shown = "; ".join(f"row {row}: " + ("deleted" if cells is None else ", ".join(f"{k}={v!r}" for k, v in
                                                                                  cells.items()))
                          for row, cells in current.items())
        super().__init__(f"not saved: {len(current)} row{'s' if len(current) > 1 else ''} of dataset '{dataset}' "
                         f"changed since they were shown (now {shown}); look again and redo the edit")


class RegressionGateFailed(HeadsmithError):
    """A kept head got worse than the recipe allows: the model is written, but not fit to be promoted."""

    def __init__(self, failures: list[str], run: object):
        self.failures = failures
        super().__init__(f"regression gate failed, the model in {run} is not to be promoted:\n"
                         + "\n".join(f"  - {f}" for f in failures))
