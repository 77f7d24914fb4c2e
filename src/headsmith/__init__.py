"""headsmith: declarative training of multi-head moderation classifiers."""

from headsmith.models.package import load_model

__all__ = ["load_model"]
__version__ = "0.1.0"
