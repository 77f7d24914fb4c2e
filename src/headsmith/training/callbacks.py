"""Lightning callbacks every headsmith run uses, whatever its config."""

from __future__ import annotations

import pytorch_lightning as pl


class EpochSeed(pl.Callback):
    """Seeds each epoch from (seed, epoch): an epoch's shuffling, dropout and augmentation do not depend on the
    epochs before it, so a run resumed from a checkpoint goes on exactly as if it had never stopped."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)
