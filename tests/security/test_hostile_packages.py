"""A model package is something people download and share: loading one never runs code the package names, every
field it uses is checked, and it never reads outside its own folder."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import small_image_model
from headsmith.errors import HeadsmithError
from headsmith.models.package import META_FILE, load_model, read_meta

COPYFILE = "headsmith.models.package.shutil.copyfile"


@pytest.fixture
def package(tmp_path) -> Path:
    return small_image_model(tmp_path / "made")


def edit_meta(folder: Path, change) -> Path:
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def refused(folder: Path, *words: str) -> str:
    with pytest.raises(HeadsmithError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert str(folder) in message and all(word in message for word in words), message
    return message


@pytest.mark.parametrize("where", ["argument", "target", "nested"])
def test_a_package_naming_a_callable_never_runs_it(package, tmp_path, where):
    secret, copy = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("api key")
    call = {"_target_": COPYFILE, "_args_": [str(secret), str(copy)]}

    def plant(meta):
        head = meta["heads"]["cat"]["head"]
        if where == "argument":  # the reproduced attack: a constructor argument instantiated recursively
            head["dropout"] = call
        elif where == "target":
            head.update(call)
        else:
            head["extra"] = {"inner": [call]}
    edit_meta(package, plant)
    refused(package, "heads.cat.head")
    assert not copy.exists()


@pytest.mark.parametrize("change, field", [
    (lambda m: m["heads"]["cat"]["head"].update(_target_="torch.nn.Linear"), "heads.cat.head._target_"),
    (lambda m: m["heads"]["cat"]["head"].update(_target_="headsmith.models.heads.nn.Linear"),
     "heads.cat.head._target_"),
    (lambda m: m["heads"]["cat"]["head"].update(num_classes=3), "heads.cat.head.num_classes"),
    (lambda m: m["heads"]["cat"]["head"].update(in_dim="12"), "heads.cat.head.in_dim"),
    (lambda m: m["heads"]["cat"]["head"].update(dropout=1.5), "heads.cat.head.dropout"),
    (lambda m: m["heads"]["cat"]["head"].update(_partial_=True), "heads.cat.head._partial_"),
    (lambda m: m["heads"]["cat"].update(classes="no,yes"), "heads.cat.classes"),
    (lambda m: m["heads"]["cat"].update(classes=["no", "no"]), "heads.cat.classes"),
    (lambda m: m["heads"]["cat"].update(thresholds={"yes": {"threshold": 1.5}}), "heads.cat.thresholds.yes"),
    (lambda m: m["heads"]["cat"].update(thresholds={"yes": {"threshold": "high"}}), "heads.cat.thresholds.yes"),
    (lambda m: m["heads"]["cat"].update(thresholds={"maybe": {"threshold": 0.5}}), "heads.cat.thresholds.maybe"),
    (lambda m: m.update(heads={}), "heads"),
    (lambda m: m["backbone"].update(kind="pickle"), "backbone.kind"),
    (lambda m: m["backbone"].update(image_size=-1), "backbone.image_size"),
    (lambda m: m["backbone"].update(mean=[0.5]), "backbone.mean"),
    (lambda m: m["backbone"].update(pretrained="../../elsewhere"), "backbone.pretrained"),
    (lambda m: m.update(format_version=99), "format_version"),
    (lambda m: m.update(preprocessing={"max_tokens": "all"}), "preprocessing.max_tokens"),
])
def test_every_field_a_load_uses_is_checked_and_named(package, change, field):
    edit_meta(package, change)
    refused(package, field)
    with pytest.raises(HeadsmithError, match=field.replace(".", r"\.")):
        read_meta(package)  # the serving API reads model.json alone: it gets the same checks


def test_todays_packages_keep_loading_and_lineage_is_never_opened(package, tmp_path):
    edit_meta(package, lambda m: m["lineage"].update(snapshots={"train": "/nonexistent/../../etc/passwd"}))
    net = load_model(package)
    assert list(net.classes) == ["cat"] and net.head_specs["cat"]["_target_"] == "headsmith.models.heads.LinearHead"


def test_a_package_never_reads_outside_its_folder(package, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.move(package / "model.safetensors", outside)
    (package / "model.safetensors").symlink_to(outside)
    refused(package, "model.safetensors", "outside the package")
    (package / "model.safetensors").unlink()
    shutil.move(outside, package / "model.safetensors")
    shutil.move(package / "backbone", tmp_path / "elsewhere")
    (package / "backbone").symlink_to(tmp_path / "elsewhere")
    refused(package, "backbone", "outside the package")


@pytest.mark.parametrize("model_type", ["bert", "evil"])
def test_files_under_backbone_are_data_never_code(tmp_path, tiny_backbone, model_type):
    """A transformers config can name code to run (`auto_map`): a package's is read with trust_remote_code off,
    as a known architecture (bert) or refused (an unknown one)."""
    from headsmith.models.backbones import text_backbone
    from headsmith.models.heads import LinearHead
    from headsmith.models.net import MultiHeadNet
    from headsmith.models.package import save_package

    backbone = text_backbone(str(tiny_backbone), max_tokens=32)
    spec = {"_target_": "headsmith.models.heads.LinearHead", "in_dim": backbone.out_dim, "num_classes": 2}
    folder = save_package(MultiHeadNet(backbone, {"spam": LinearHead(backbone.out_dim, 2)}, {"spam": ["no", "yes"]},
                                       {"spam": spec}), tmp_path / "text-model", {})
    marker = tmp_path / "code-ran"
    (folder / "backbone" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                                 "from transformers import BertConfig as EvilConfig\n"
                                                 "from transformers import BertModel as EvilModel\n")
    for name, classes in [("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}),
                          ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilConfig", None]})]:
        config = json.loads((folder / "backbone" / name).read_text())
        config["auto_map"] = classes
        config["model_type"] = model_type if name == "config.json" else config.get("model_type")
        (folder / "backbone" / name).write_text(json.dumps(config))
    if model_type == "bert":
        assert load_model(folder).classes == {"spam": ["no", "yes"]}
    else:
        refused(folder, "backbone")
    assert not marker.exists()


class Payload:
    """Unpickling this object opens (creates) a file: what a hostile checkpoint would do with any callable."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.open, (self.path, "w")


def test_resuming_from_a_checkpoint_unpickles_no_code(tmp_path, compose, reviews_snapshot):
    from headsmith.training.train import train

    run = tmp_path / "hostile-run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 1, "global_step": 10, "state_dict": {}, "evil": Payload(marker)},
               run / "checkpoints" / "last.ckpt")
    with pytest.raises(HeadsmithError, match="last.ckpt"):
        train(compose("dataset.snapshot=reviews", "fit=sgd", f"resume={run}"))
    assert not marker.exists()


def test_a_recipe_cannot_train_a_head_no_package_could_load(compose, reviews_snapshot):
    from headsmith.errors import ConfigError
    from headsmith.training.validate import validate_config
    from headsmith.workspace import Workspace

    with pytest.raises(ConfigError, match=r"head._target_=torch.nn.Linear: a model package holds only heads"):
        validate_config(compose("dataset.snapshot=reviews", "head._target_=torch.nn.Linear", "~head.dropout",
                                "fit=sgd"), Workspace())
