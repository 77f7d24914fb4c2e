"""The selection rule drives the real Lightning checkpoint and early-stopping callbacks, from one definition."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from headsmith.training.selection import monitor_key
from headsmith.training.train import _instantiate_all

F1 = [0.50, 0.70, 0.60, 0.65, 0.62, 0.90]  # peaks at epoch 1, then 3 epochs without improvement
LOSS = [0.90, 0.80, 0.85, 0.70, 0.75, 0.72, 0.71, 0.74]  # lowest at epoch 3


class Scripted(pl.LightningModule):
    """Logs a scripted value per epoch under the keys the real module uses."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        epoch = self.current_epoch
        self.log("val/sentiment/f1", F1[min(epoch, len(F1) - 1)])
        self.log("val/loss", LOSS[min(epoch, len(LOSS) - 1)])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=2)


@pytest.mark.parametrize("overrides, best_epoch, stopped_after", [
    (["selection.head=sentiment"], 1, 4),  # f1 max: epoch 1 wins, patience 3 stops after epoch 4 (never sees 0.90)
    (["selection=loss"], 3, 6),            # loss min: epoch 3 wins, stops after epoch 6
])
def test_rule_picks_the_epoch(compose, tmp_path, overrides, best_epoch, stopped_after):
    cfg = compose(*overrides, "callbacks.early_stopping.patience=3", "trainer.max_epochs=8")
    trainer = pl.Trainer(max_epochs=8, callbacks=_instantiate_all(cfg.callbacks), logger=False,
                         enable_progress_bar=False, accelerator="cpu")
    trainer.fit(Scripted())
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert best["epoch"] == best_epoch
    assert trainer.current_epoch == stopped_after + 1  # epochs run
    # last.ckpt, what `resume=` continues from, is the last epoch run, not the best: a crash loses one epoch at most
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == stopped_after


def test_monitor_keys():
    assert monitor_key("f1") == "val/f1"
    assert monitor_key("loss") == "val/loss"
    assert monitor_key("loss", "spam") == "val/spam/loss"
    assert monitor_key("balanced_accuracy", "spam") == "val/spam/balanced_accuracy"
    assert monitor_key("precision", "spam", "yes_spam") == "val/spam/precision/yes_spam"
