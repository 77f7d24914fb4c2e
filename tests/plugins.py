"""Classes that test runs load by `_target_` (with PYTHONPATH=tests for the `headsmith` command)."""

import os
import signal

import optuna
import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """kill -9 of the training process at a given step: a crash with no chance to clean up."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes trials 1, 3, 5... at their first report: which trials are pruned does not depend on their scores."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1
