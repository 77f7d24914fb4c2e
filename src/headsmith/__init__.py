"""headsmith: declarative training of multi-head moderation classifiers."""

__version__ = "0.1.0"


def load_model(path):
    """Load a model package; `.predict(inputs)` gives per-head, per-class scores. (Imported lazily: the CLI
    should not pay for torch on commands that do not need it.)"""
    from headsmith.models.package import load_model as _load

    return _load(path)


__all__ = ["load_model"]
