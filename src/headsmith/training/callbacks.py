"""Lightning callbacks of headsmith's runs: every run's (EpochSeed) and a tune trial's (OptunaPruning)."""

from __future__ import annotations

import optuna
import pytorch_lightning as pl


class EpochSeed(pl.Callback):
    """Seeds each epoch from (seed, epoch): an epoch's shuffling, dropout and augmentation do not depend on the
    epochs before it, so a run resumed from a checkpoint goes on exactly as if it had never stopped."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed + trainer.current_epoch, workers=True, verbose=False)


class OptunaPruning(pl.Callback):
    """Reports the monitored validation value after each epoch; stops the trial when Optuna's pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str):
        self.trial = trial
        self.monitor = monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.monitor not in trainer.callback_metrics:
            return
        value, epoch = float(trainer.callback_metrics[self.monitor]), trainer.current_epoch
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"{self.monitor}={value:.4f} after epoch {epoch}")
