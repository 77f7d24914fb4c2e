"""Snapshot rows -> train/val/test batches: stratified seeded splits, label ids per head (-1 = unlabelled)."""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from headsmith.data.snapshot import Snapshot, load_snapshot, snapshot_differences
from headsmith.errors import HeadsmithError
from headsmith.workspace import Workspace

UNLABELLED = -1


def stratified_split(frame: pd.DataFrame, heads: list[str], fractions: dict[str, float], seed: int) -> dict:
    """Split rows so every combination of labels (unlabelled counts as its own value) keeps its share in each
    part. `fractions` gives the share of each held-out part; the rest is `train`. The combinations are taken in the
    order of their "label|label" keys, each one's rows shuffled by one seeded permutation: the same split for the
    same rows as ever, with a few integers per row (no key string per row)."""
    rng = np.random.default_rng(seed)
    codes, names = zip(*(pd.factorize(frame[head].fillna("-").astype(str)) for head in heads)) if heads else ((), ())
    combos, combo_of = (np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True) if heads
                        else (np.zeros((1, 0), np.int64), np.zeros(len(frame), np.int64)))
    combo_of = combo_of.reshape(-1)
    keys = ["|".join(str(names[h][c]) for h, c in enumerate(combo)) for combo in combos]
    members = np.argsort(combo_of, kind="stable")  # each combination's rows, in frame order
    counts = np.bincount(combo_of, minlength=len(combos))
    ends = np.cumsum(counts)
    parts = {name: [] for name in ["train", *fractions]}
    for combo in sorted(range(len(combos)), key=keys.__getitem__):
        rows = rng.permutation(members[ends[combo] - counts[combo]:ends[combo]])
        start = 0
        for name, share in fractions.items():
            take = int(round(share * len(rows)))
            parts[name].append(rows[start:start + take])
            start += take
        parts["train"].append(rows[start:])
    return {name: frame.iloc[np.sort(np.concatenate(rows or [np.zeros(0, np.int64)]))].reset_index(drop=True)
            for name, rows in parts.items()}


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """n / (k * n_class) per class from its row counts, so rare classes count as much as common ones."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts.sum() / (len(counts) * np.maximum(counts, 1))


class LabelledRows(Dataset):
    """A split's rows as (position in its snapshot, labels); the collate function reads what a batch needs."""

    def __init__(self, frame: pd.DataFrame, classes: dict[str, list[str]]):
        self.inputs = frame["position"].to_numpy()
        self.labels = {
            head: torch.tensor(frame[head].map({c: i for i, c in enumerate(names)}).fillna(UNLABELLED)
                               .astype("int64").to_numpy())
            for head, names in classes.items()
        }

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        return self.inputs[i], {head: labels[i] for head, labels in self.labels.items()}


class LengthBuckets:
    """Training batches of rows of similar length, so little of a batch is padding: a seeded shuffle, cut into pools
    of `pool` batches, each sorted by length and cut into batches, the batches shuffled. The order depends on
    (seed, epoch) alone; under DDP each rank takes every world-th batch (the list padded to a multiple of world)."""

    def __init__(self, lengths, batch_size: int, seed: int, rank: int = 0, world: int = 1, pool: int = 50):
        self.lengths, self.batch_size, self.seed, self.rank, self.world = list(lengths), batch_size, seed, rank, world
        self.pool, self.epoch = pool, 0
        self.sampler = self  # Lightning sets the epoch through `batch_sampler.sampler.set_epoch`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches, size = [], self.batch_size * self.pool
        for start in range(0, len(order), size):
            pool = sorted(order[start:start + size], key=self.lengths.__getitem__)
            batches += [pool[i:i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        batches += batches[:(-len(batches)) % self.world]
        return batches[self.rank::self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        batches = -(-len(self.lengths) // self.batch_size)  # every pool but the last is a whole number of batches
        return -(-batches // self.world)


class SnapshotDataModule(pl.LightningDataModule):
    """Reads snapshots only. Held-out parts come from a separate test snapshot or a seeded random split."""

    def __init__(self, snapshot: str, *, workspace: Workspace, preprocess: Callable[..., dict],
                 test_snapshot: str | None = None, heads: list[str] | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.snapshot = load_snapshot(workspace, snapshot)
        self.test_snapshot = load_snapshot(workspace, test_snapshot) if test_snapshot else None
        manifest = self.snapshot.manifest
        heads = list(heads) if heads else list(manifest.heads)
        missing = [h for h in heads if h not in manifest.heads]
        if missing:
            raise HeadsmithError(f"dataset.heads: snapshot '{manifest.name}' has no labels for {missing} (it labels: "
                                 f"{', '.join(manifest.heads)}); drop them or snapshot a CSV with --label HEAD=COLUMN")
        if self.test_snapshot:
            problems = snapshot_differences(self.snapshot, self.test_snapshot, heads)
            if problems:
                raise HeadsmithError("dataset.test_snapshot does not match dataset.snapshot:\n  " + "\n  ".join(problems))
        self.heads = heads
        self.classes = {h: manifest.heads[h].classes for h in heads}
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

        self.features: dict | None = None  # split -> its snapshot's cached embeddings, see use_features
        self.trunks: dict | None = None  # split -> cached token states of its snapshot, see use_trunk
        # Every row but its input (read a batch at a time, see _collate): position is the row in the snapshot.
        frame = self.snapshot.labels()
        frame = frame[frame[heads].notna().any(axis=1)]  # rows that label none of the trained heads teach nothing
        held_out = {"val": val_fraction} if self.test_snapshot else {"val": val_fraction, "test": test_fraction}
        self.splits = stratified_split(frame, heads, held_out, seed)
        if self.test_snapshot:
            test = self.test_snapshot.labels()
            self.splits["test"] = test[test[heads].notna().any(axis=1)].reset_index(drop=True)
        for part, rows in self.splits.items():
            if rows.empty:
                raise HeadsmithError(f"the {part} split of snapshot '{manifest.name}' is empty ({len(frame)} rows); "
                                     "use a larger snapshot or change dataset.val_fraction / dataset.test_fraction")

    def class_weights(self) -> dict[str, torch.Tensor]:
        """Balanced weights from the training split: n / (k * n_class), so rare classes count as much as common ones."""
        weights = {}
        for head, names in self.classes.items():
            counts = self.splits["train"][head].value_counts().reindex(names, fill_value=0).to_numpy()
            weights[head] = torch.tensor(balanced_weights(counts), dtype=torch.float32)
        return weights

    def use_features(self, features_of: Callable[[Snapshot], object]) -> None:
        """Serve precomputed embeddings instead of raw inputs: `features_of(snapshot)[positions]`, read a batch at
        a time (the cache is memory-mapped: a split is never copied whole)."""
        sources = {"train": self.snapshot, "val": self.snapshot, "test": self.test_snapshot or self.snapshot}
        self.features = {part: features_of(source) for part, source in sources.items()}

    def use_trunk(self, trunk_of: Callable[[Snapshot], object]) -> None:
        """Serve the cached trunk (`trunk_of(snapshot).batch(positions)`: token states or feature maps) instead of
        raw inputs."""
        sources = {"train": self.snapshot, "val": self.snapshot, "test": self.test_snapshot or self.snapshot}
        self.trunks = {part: trunk_of(source) for part, source in sources.items()}

    def _collate(self, items, part: str):
        positions, labels = zip(*items)
        positions = [int(p) for p in positions]
        if self.features:
            batch = {"features": self.features[part][positions]}
        elif self.trunks:
            batch = self.trunks[part].batch(positions)
        else:
            source = self.test_snapshot if part == "test" and self.test_snapshot else self.snapshot
            batch = self.preprocess(source.load_inputs(source.inputs(positions)), train=part == "train")
        return {"inputs": batch, "labels": {h: torch.stack([lab[h] for lab in labels]) for h in self.heads}}

    def _loader(self, part: str) -> DataLoader:
        rows = LabelledRows(self.splits[part], self.classes)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        world, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if distributed else (1, 0)
        collate = functools.partial(self._collate, part=part)
        if part == "train" and self.trunks:  # a cached trunk: batches of similar length
            lengths = self.trunks[part].lengths[self.splits[part]["position"].to_numpy()]
            return DataLoader(rows, batch_sampler=LengthBuckets(lengths, self.batch_size, self.seed, rank, world),
                              num_workers=self.num_workers, collate_fn=collate)
        if part == "train":
            # The order depends on (seed, epoch) alone (Lightning calls set_epoch), so a resumed run sees what an
            # uninterrupted one would; under DDP each rank takes its share.
            sampler = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        else:
            # Every row once, also across ranks: Lightning's own sampler would repeat rows to even out the shares,
            # and the repeated rows would count twice in the metrics.
            sampler = range(rank, len(rows), world)
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.seed))  # not the global RNG: dropout's

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def split_sizes(self) -> dict[str, int]:
        return {part: len(rows) for part, rows in self.splits.items()}

    def leakage(self) -> dict:
        """Inputs (texts, or images by hash) found in training and in a held-out part: they inflate held-out metrics.
        Compared by 64-bit hashes of the inputs, never all held at once. Also the snapshot's own identical inputs
        with conflicting labels."""
        hashes = self.snapshot.input_hashes()
        seen = hashes[self.splits["train"]["position"].to_numpy()]
        report = {}
        for part in ("val", "test"):
            source = self.test_snapshot if part == "test" and self.test_snapshot else self.snapshot
            mine = (hashes if source is self.snapshot else source.input_hashes())[self.splits[part]["position"]]
            shared = self.splits[part][np.isin(mine, seen)]
            report[f"train_{part}_overlap"] = {"rows": len(shared), "examples": shared["row"].head(10).tolist()}
        report["conflicting_duplicates"] = self.snapshot.manifest.leakage.get("conflicting_duplicates", 0)
        return report
