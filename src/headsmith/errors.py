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
