import numpy as np
import pandas as pd
import pytest
import torch

from headsmith.data.datamodule import SnapshotDataModule, stratified_split
from headsmith.data.snapshot import create_snapshot

from conftest import import_csv, snapshot_csv


def test_split_is_stratified_disjoint_and_seeded(reviews_snapshot):
    frame = reviews_snapshot.frame()
    heads = ["sentiment", "long"]
    parts = stratified_split(frame, heads, {"val": 0.1, "test": 0.2}, seed=0)
    rows = {name: set(p["row"]) for name, p in parts.items()}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert set().union(*rows.values()) == set(frame["row"])
    assert parts["test"]["sentiment"].value_counts().to_dict() == {"negative": 24, "positive": 24}
    assert parts["val"]["sentiment"].value_counts().to_dict() == {"negative": 12, "positive": 12}
    for name, share in (("val", 0.1), ("test", 0.2)):  # every label combination keeps its share
        combos = frame.groupby(["sentiment", frame["long"].fillna("-")]).size()
        got = parts[name].groupby(["sentiment", parts[name]["long"].fillna("-")]).size()
        assert (got - (combos * share).round()).abs().max() <= 1
    again = stratified_split(frame, heads, {"val": 0.1, "test": 0.2}, seed=0)
    other = stratified_split(frame, heads, {"val": 0.1, "test": 0.2}, seed=1)
    assert again["val"]["row"].tolist() == parts["val"]["row"].tolist()
    assert other["val"]["row"].tolist() != parts["val"]["row"].tolist()


def test_splits_are_the_rows_earlier_versions_chose(reviews_snapshot):
    """Existing snapshots keep their splits: the split equals the one headsmith made before it stopped building a
    key string per row (that code, below), on real rows and on labels chosen to sort differently as strings and as
    tuples ("a b" < "a|..." as a key), with unlabelled cells and rows that label no head."""
    def before(frame, heads, fractions, seed):
        rng = np.random.default_rng(seed)
        labels = [frame[head].fillna("-").astype(str) for head in heads]
        strata = labels[0].str.cat(labels[1:], sep="|")
        parts = {name: [] for name in ["train", *fractions]}
        for _, index in sorted(frame.groupby(strata).groups.items()):
            index = rng.permutation(np.asarray(index))
            start = 0
            for name, share in fractions.items():
                take = int(round(share * len(index)))
                parts[name].extend(index[start:start + take])
                start += take
            parts["train"].extend(index[start:])
        return {name: frame.loc[sorted(idx)].reset_index(drop=True) for name, idx in parts.items()}

    rng = np.random.default_rng(5)
    tricky = pd.DataFrame({"row": range(3000), "a": rng.choice(["a", "a b", "a|c", "b", None], 3000),
                           "b": rng.choice(["x", "-", "x y", None], 3000), "c": rng.choice([None, "z"], 3000)})
    tricky = tricky[tricky[["a", "b"]].notna().any(axis=1)]  # as the datamodule filters (the index has gaps)
    for frame, heads in ((reviews_snapshot.labels(), ["sentiment", "long"]), (reviews_snapshot.labels(), ["long"]),
                         (tricky, ["a", "b"]), (tricky, ["a", "b", "c"])):
        for seed in (0, 42):
            ours, theirs = (split(frame, heads, {"val": 0.1, "test": 0.2}, seed) for split in (stratified_split,
                                                                                            before))
            for name in ("train", "val", "test"):
                pd.testing.assert_frame_equal(ours[name], theirs[name])


def test_batches_carry_masked_labels_and_balanced_weights(workspace, tmp_path):
    path = tmp_path / "imbalanced.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(100)],
                  "spam": ["yes"] * 20 + ["no"] * 80,
                  "nsfw": ["safe", "", "unsafe", ""] * 25}).to_csv(path, index=False)
    snapshot_csv(workspace, path, "imb", "text", {"spam": "spam", "nsfw": "nsfw"})
    dm = SnapshotDataModule("imb", workspace=workspace, preprocess=lambda texts, train: {"n": torch.tensor(len(texts))},
                            val_fraction=0.1, test_fraction=0.2, heads=["spam"])
    assert dm.split_sizes() == {"train": 70, "val": 10, "test": 20}
    weights = dm.class_weights()["spam"]  # classes sorted: no, yes; n / (k * n_class) on 56 no / 14 yes
    assert weights.tolist() == pytest.approx([70 / (2 * 56), 70 / (2 * 14)])
    batch = next(iter(dm.val_dataloader()))
    assert set(batch["labels"]) == {"spam"} and batch["inputs"]["n"] == 10
    assert sorted(batch["labels"]["spam"].tolist()) == [0] * 8 + [1] * 2


def test_leakage_between_train_and_held_out_parts(workspace, tmp_path):
    path = tmp_path / "dupes.csv"
    texts = [f"review {i}" for i in range(50)] * 2  # every text twice: a random split puts many on both sides
    pd.DataFrame({"text": texts, "spam": ["yes"] * 50 + ["no"] * 50}).to_csv(path, index=False)
    snapshot_csv(workspace, path, "dupes", "text", {"spam": "spam"})
    dm = SnapshotDataModule("dupes", workspace=workspace, preprocess=None, val_fraction=0.2, test_fraction=0.2)
    report = dm.leakage()
    test = dm.splits["test"]
    assert "input" not in test  # the splits hold positions and labels; inputs are read a batch at a time
    inputs = dm.snapshot.inputs
    expected = test[pd.Series(inputs(test["position"])).isin(set(inputs(dm.splits["train"]["position"]))).to_numpy()]
    assert report["train_test_overlap"]["rows"] == len(expected) > 0
    assert report["train_test_overlap"]["examples"] == expected["row"].head(10).tolist()
    assert report["conflicting_duplicates"] == 50  # "review i" is both yes and no


def test_image_snapshots_batch_through_the_same_path(workspace, tmp_path, image_server):
    path = tmp_path / "digits.csv"
    pd.DataFrame({"url": [f"{image_server.url}/digit/{i}.png" for i in range(40)],
                  "digit": [str(i % 10) for i in range(40)]}).to_csv(path, index=False)
    import_csv(workspace, path, "digits", digit="label")
    create_snapshot(workspace, "digits", name="digits", type="image-classification", input_column="url",
                    labels={"digit": "digit"})
    to_tensor = lambda images, train: {"pixels": torch.stack([torch.tensor(list(im.getdata()), dtype=torch.float32)
                                                       .reshape(im.height, im.width, 3) for im in images])}
    dm = SnapshotDataModule("digits", workspace=workspace, preprocess=to_tensor, val_fraction=0.25,
                            test_fraction=0.25, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"]["pixels"].shape == (8, 32, 32, 3) and batch["labels"]["digit"].shape == (8,)


def test_length_buckets_cover_every_row_once_in_batches_of_similar_length():
    from headsmith.data.datamodule import LengthBuckets

    lengths = [int(n) for n in np.random.default_rng(0).integers(1, 120, 1000)]
    buckets = LengthBuckets(lengths, 32, seed=7, pool=4)
    batches = list(buckets)
    assert len(batches) == len(buckets) == 32 and sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert padded < 1.3 * sum(lengths)  # random batches of 32 pad to about 1.9x
    assert list(LengthBuckets(lengths, 32, seed=7, pool=4)) == batches  # (seed, epoch) alone decide the order
    buckets.set_epoch(1)
    assert list(buckets) != batches
    shares = [list(LengthBuckets(lengths, 32, seed=7, rank=r, world=3, pool=4)) for r in range(3)]
    assert [len(s) for s in shares] == [11, 11, 11]  # every rank the same number of steps
    assert set(i for s in shares for b in s for i in b) == set(range(1000))
