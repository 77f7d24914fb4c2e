"""Classification heads: each maps a backbone embedding to the logits of one head's mutually exclusive classes.

A model package names its heads' classes; only the classes in `HEADS`, with plain numbers as arguments, are ever
built from one (a package is shared like a document: it must not be able to name code to run)."""

import math

from torch import nn


class LinearHead(nn.Sequential):
    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))


class MLPHead(nn.Sequential):
    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


HEADS = {f"{__name__}.{cls.__qualname__}": cls for cls in (LinearHead, MLPHead)}
# Every argument a head class takes: its type and range. Required: in_dim and num_classes.
ARGUMENTS = {"in_dim": (int, 1, 1 << 20), "num_classes": (int, 1, 1 << 20), "hidden": (int, 1, 1 << 20),
             "dropout": (float, 0.0, 1.0)}


def head_problems(spec, where: str) -> list[str]:
    """What is wrong with a head spec (`_target_` and constructor arguments), each problem naming its field."""
    if not isinstance(spec, dict):
        return [f"{where}: expected an object with _target_ and the head's arguments"]
    target = spec.get("_target_")
    if not isinstance(target, str) or target not in HEADS:
        return [f"{where}._target_={target!r}: not a head headsmith builds (one of: {', '.join(HEADS)})"]
    cls, problems = HEADS[target], []
    options = cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]
    for key, value in spec.items():
        if key == "_target_":
            continue
        if key not in options:
            problems.append(f"{where}.{key}: not an argument of {target} (arguments: {', '.join(options)})")
            continue
        kind, low, high = ARGUMENTS[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            problems.append(f"{where}.{key}={value!r}: expected a whole number from {low} to {high}")
        elif kind is float and not (number and math.isfinite(value) and low <= value < high):
            problems.append(f"{where}.{key}={value!r}: expected a number from {low} up to (not including) {high}")
    problems += [f"{where}.{key}: missing" for key in ("in_dim", "num_classes") if key not in spec]
    return problems


def build_head(spec: dict) -> nn.Module:
    """The head a checked spec describes (see `head_problems`): its class called with plain arguments."""
    return HEADS[spec["_target_"]](**{k: v for k, v in spec.items() if k != "_target_"})


def head_spec(options: dict, in_dim: int, num_classes: int) -> dict:
    """A new head's constructor spec from the `head` group; `head=auto` starts linear (its solve may pick an MLP)."""
    if options.get("candidates"):
        options = {"_target_": f"{__name__}.LinearHead"}
    return {**options, "in_dim": in_dim, "num_classes": num_classes}
