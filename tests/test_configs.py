"""Every recipe composes and every _target_ binds; each config mistake stops with a message naming key and fix."""

import pytest
from hydra.errors import ConfigCompositionException

from headsmith.config import compose_train_config, config_dir, register_recipes
from headsmith.errors import ConfigError
from headsmith.training.validate import static_problems, validate_config
from headsmith.workspace import Workspace

RECIPES = sorted(register_recipes())
GROUP_OPTIONS = [(group.name, option.stem) for group in sorted(config_dir().iterdir()) if group.is_dir()
                 for option in sorted(group.glob("*.yaml"))]

from conftest import snapshot_csv


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_binds(recipe, tmp_path):
    cfg = compose_train_config([f"recipe={recipe}", f"paths.output_dir={tmp_path}"])
    assert static_problems(cfg) == []
    assert cfg.name == recipe


@pytest.mark.parametrize("group, option", GROUP_OPTIONS)
def test_every_group_option_composes_and_binds(group, option, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", "dataset.snapshot=x"]
    if option == "hf_text":
        overrides.append("backbone.pretrained=/some/folder")
    assert static_problems(compose_train_config(overrides)) == []


def test_selection_rule_is_defined_once(tmp_path):
    cfg = compose_train_config(["selection.metric=recall", "selection.head=spam", "selection.class_label=yes_spam",
                                f"paths.output_dir={tmp_path}"])
    for callback in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[callback].monitor == "val/spam/recall/yes_spam"
        assert cfg.callbacks[callback].mode == "max"
    loss = compose_train_config(["selection=loss", f"paths.output_dir={tmp_path}"])
    assert (loss.callbacks.early_stopping.monitor, loss.callbacks.early_stopping.mode) == ("val/loss", "min")


def _problems(compose, *overrides, fast: bool = True) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(compose(*overrides, fast=fast), Workspace())
    return str(e.value)


def test_unknown_option(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "+optimizer.lrr=0.1")
    assert "optimizer.lrr: not an option of torch.optim.AdamW; did you mean 'lr'?" in text


def test_unknown_option_without_plus_is_refused_by_hydra(compose):
    with pytest.raises(ConfigCompositionException, match="Could not override 'optimizer.lrr'"):
        compose("optimizer.lrr=0.1")


def test_unknown_top_level_key(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "+trainr.max_epochs=3")
    assert "trainr: not a config key; did you mean 'trainer'?" in text


def test_wrong_type(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "trainer.max_epochs=many", "dataset.batch_size=1.5")
    assert "trainer.max_epochs='many': wrong type, pytorch_lightning.Trainer expects Optional[int]" in text
    assert "dataset.batch_size=1.5: wrong type" in text  # every problem is reported at once


def test_missing_label_column_for_a_head(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "dataset.heads=[sentiment,spam]")
    assert ("dataset.heads: snapshot 'reviews' has no label column for head 'spam' (it labels: sentiment, long); "
            "remove it, or create a snapshot with --label spam=COLUMN") in text


def test_missing_snapshot_and_required_key(compose, reviews_snapshot):
    assert "dataset.snapshot is required: set it in the recipe or pass dataset.snapshot=VALUE" in _problems(compose)
    assert "no snapshot named 'nope'" in _problems(compose, "dataset.snapshot=nope")


def test_selection_mistakes(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "selection.head=sentiment", "selection.class_label=neutral",
                     "selection.mode=min")
    assert "selection.class_label=neutral: not a class of head 'sentiment' (classes: negative, positive)" in text
    assert "selection.mode=min would pick the worst epoch by f1: set selection.mode=max" in text
    text = _problems(compose, "dataset.snapshot=reviews", "selection.metric=accuracy")
    assert "selection.metric=accuracy: choose one of f1, precision, recall, balanced_accuracy, loss" in text


def test_backbone_mode_and_split(compose, reviews_snapshot):
    text = _problems(compose, "dataset.snapshot=reviews", "backbone.mode=frozn", "dataset.val_fraction=1.5")
    assert "backbone.mode=frozn: choose one of frozen, partial, lora, full" in text
    assert "dataset.val_fraction=1.5: must be a share between 0 and 1" in text


def test_trainable_blocks_are_checked_before_any_weight_loads(compose, reviews_snapshot, tiny_backbone, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_weights)
    text = _problems(compose, "dataset.snapshot=reviews", "backbone.mode=partial", "backbone.trainable_blocks=0")
    assert ("backbone.trainable_blocks=0: how many of the backbone's last blocks train in partial or lora mode, "
            "from 1, or null for the mode's default (backbone.mode=full trains every weight)") in text
    text = _problems(compose, "dataset.snapshot=reviews", "backbone.mode=partial", "backbone.trainable_blocks=3")
    assert f"backbone.trainable_blocks=3: {tiny_backbone} has 2 blocks; choose 1 to 2, or backbone.mode=full" in text
    text = _problems(compose, "dataset.snapshot=reviews", "backbone=minilm", "backbone.mode=partial",
                     "backbone.trainable_blocks=7", fast=False)
    assert "backbone.trainable_blocks=7: all-MiniLM-L6-v2 has 6 blocks; choose 1 to 6" in text


def test_test_snapshot_must_match(compose, workspace, reviews_snapshot, tmp_path):
    import pandas as pd

    
    path = tmp_path / "other.csv"
    pd.DataFrame({"text": ["good", "bad", "meh"], "sentiment": ["positive", "negative", "neutral"]}).to_csv(path, index=False)
    snapshot_csv(workspace, path, "other", "text", {"sentiment": "sentiment"})
    text = _problems(compose, "dataset.snapshot=reviews", "dataset.test_snapshot=other")
    assert "head 'sentiment' classes differ: only in 'reviews': [], only in 'other': ['neutral']" in text
    assert "head 'long' is not labelled in the test snapshot 'other' (it labels: sentiment)" in text
