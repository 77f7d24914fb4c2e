"""Low-rank adapters (LoRA, through peft) on a backbone's trainable blocks; folded into plain weights before a model
is packaged, so loading and serving a package never needs peft."""

from __future__ import annotations

import math

from torch import nn

from headsmith.errors import HeadsmithError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)  # the layer types peft's LoRA wraps


def default_targets(family: str | None) -> list[str] | None:
    """peft's own choice for a transformers model type (the attention projections: query and value for BERT-like
    encoders); None when peft has none."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    return list(defaults[family]) if family in defaults else None


def lora_problems(lora, family: str | None, blocks: list[nn.Module] | None, name: str) -> list[str]:
    """What is wrong with `backbone.lora` for `name`, whose transformers model type is `family` (None: not a
    transformers model) and whose trainable blocks are `blocks` (None: not known before weights load)."""
    lora = lora if isinstance(lora, dict) else {}
    rank, alpha, dropout, targets = (lora.get(k) for k in ("rank", "alpha", "dropout", "targets"))
    problems = []
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"backbone.lora.rank={rank}: the adapters' rank, a whole number from 1 (8 is usual)")
    if not _number(alpha) or alpha <= 0:
        problems.append(f"backbone.lora.alpha={alpha}: the adapters' scale (alpha / rank), a positive number")
    if not _number(dropout) or not 0 <= dropout < 1:
        problems.append(f"backbone.lora.dropout={dropout}: a share from 0 to below 1")
    if targets is not None and not (isinstance(targets, list) and targets
                                    and all(isinstance(t, str) and t for t in targets)):
        return [*problems, f"backbone.lora.targets={targets}: a list of module names, e.g. [query, value], or null "
                           "for the backbone family's default"]
    if targets is None:
        targets = default_targets(family)
        if targets is None:
            what = f"a transformers '{family}' model" if family else "not a transformers model"
            return [*problems, f"backbone.mode=lora: {name} is {what}, for which peft has no default adapter "
                               "targets (it has them for BERT-like text encoders: MiniLM, BERT, RoBERTa, "
                               "XLM-R, DeBERTa); name the layers in backbone.lora.targets (Linear or Conv layers "
                               "of its blocks), or use backbone.mode=partial"]
    if blocks:
        names = {n for block in blocks for n, m in block.named_modules() if isinstance(m, ADAPTABLE)}
        missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            found = sorted({n.rpartition(".")[2] for n in names})
            problems.append(f"backbone.lora.targets: {missing} name no Linear or Conv layer in the blocks of {name} "
                            f"(its layers: {', '.join(found)})")
    return problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def add_lora(blocks: list[nn.Module], lora: dict, family: str | None, name: str) -> None:
    """Adapters on the `targets` layers of each block; afterwards only the adapters of these blocks train."""
    problems = lora_problems(lora, family, blocks, name)
    if problems:
        raise HeadsmithError("\n".join(problems))
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise HeadsmithError("backbone.mode=lora needs peft: pip install 'peft>=0.13'") from None
    config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=list(lora.get("targets") or default_targets(family)))
    for block in blocks:
        inject_adapter_in_model(config, block)


def merge_lora(module: nn.Module) -> nn.Module:
    """Every adapter in `module` folded into the weight it adapts and its wrapper replaced by the plain layer: the
    same function (to float rounding), the same state-dict keys as before the adapters, no peft needed to load it."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return module  # without peft there are no adapters
    for name, layer in list(module.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent), attribute, layer.get_base_layer())
    return module
