"""Classification heads: each maps a backbone embedding to the logits of one head's mutually exclusive classes."""

from torch import nn


class LinearHead(nn.Sequential):
    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))


def head_spec(options: dict, in_dim: int, num_classes: int) -> dict:
    """A new head's constructor spec from the `head` group; `head=auto` starts linear (its solve may pick an MLP)."""
    if options.get("candidates"):
        options = {"_target_": f"{__name__}.LinearHead"}
    return {**options, "in_dim": in_dim, "num_classes": num_classes}


class MLPHead(nn.Sequential):
    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))
