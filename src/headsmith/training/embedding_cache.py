"""What the frozen part of a backbone computes, once per (snapshot, backbone, preprocessing), kept in the workspace.

With a frozen backbone the forward pass over the data is the only real cost of training; every epoch and every
later run on the same snapshot reads the stored embeddings instead. With a partially trainable backbone what enters
the first trainable block (a text backbone's token states, an image backbone's feature maps) is kept the same way
(the trunk), so each step runs only the trainable blocks and the heads."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.progress import Progress

from headsmith.data.snapshot import DATA_FILE, Snapshot
from headsmith.engines import RAY_TASK_ROWS, RayOptions
from headsmith.errors import HeadsmithError
from headsmith.files import give_back, map_file
from headsmith.evaluation.report import console
from headsmith.models.net import batched, evaluating
from headsmith.workspace import Workspace


def backbone_id(backbone: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> str:
    """Identifies what the backbone computes: its spec (incl. preprocessing) and the bytes of its weights (`state`:
    only those, when what is cached depends on no others)."""
    digest = hashlib.sha256(json.dumps(backbone.spec(), sort_keys=True).encode())
    for name, tensor in sorted((backbone.state_dict() if state is None else state).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def embed(backbone: torch.nn.Module, inputs: list, load: Callable[[list], list] = list, batch_size: int = 128,
          description: str | None = "embedding") -> torch.Tensor:
    """One embedding per input, in input order; `load` turns a batch of stored values into what the backbone takes.
    Batches hold inputs of similar length, so little is padding."""
    with evaluating(backbone):
        out = batched(lambda batch: {"embedding": backbone(backbone.preprocess(load(batch))).float().cpu()}, inputs,
                      batch_size, description, by_length=True)
    return out["embedding"] if out else torch.empty(0, backbone.out_dim)


SHARD_ROWS = 65_536  # embeddings per shard file (96 MiB at 384 dimensions): what computing them holds at once


def _mapped_npy(path: Path) -> tuple[object, np.ndarray]:
    """A .npy file memory-mapped read-only: the mapping (to give pages back) and the array over it."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    mapped = map_file(path)
    array = np.frombuffer(mapped, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(
        shape, order="F" if fortran else "C")
    return mapped, array


class Embeddings:
    """A snapshot's embeddings, row after row, in shards memory-mapped from the cache: `embeddings[positions]`
    reads only those rows, so no size of snapshot is held in memory at once. The pages a read touched are given
    back right after (they stay in the page cache, not in this process): reading every row, as a fit over all of
    them does, leaves the process no larger."""

    def __init__(self, folder: Path):
        self.folder = folder
        mapped = [_mapped_npy(f) for f in sorted(folder.glob("shard-*.npy"))]
        self._maps, self.shards = [m for m, _ in mapped], [a for _, a in mapped]
        self.starts = np.cumsum([0, *(len(shard) for shard in self.shards)])
        self.dim = self.shards[0].shape[1] if self.shards else 0

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    def __getitem__(self, index) -> torch.Tensor:
        positions = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        for k in np.unique(shard):
            mine = shard == k
            out[mine] = self.shards[k][positions[mine] - self.starts[k]]
            give_back(self._maps[k])
        return torch.from_numpy(out)

    def numpy(self) -> np.ndarray:
        """All of them, in memory."""
        return self[:].numpy()

    def __getstate__(self):  # to a DataLoader worker: the folder, not the mapped bytes
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.__init__(state["folder"])


class EmbeddingCache:
    """`ray`: fill it on a Ray cluster (see `_embed_on_ray`) instead of in this process."""

    def __init__(self, workspace: Workspace, ray: RayOptions | None = None):
        self.folder = workspace.root / "cache" / "embeddings"
        self.ray = ray
        self._ids: dict[int, str] = {}  # hashing the weights once per frozen backbone, not once per snapshot

    def path(self, snapshot: Snapshot, backbone: torch.nn.Module) -> Path:
        if id(backbone) not in self._ids:
            self._ids[id(backbone)] = backbone_id(backbone)
        return self.folder / f"{snapshot.manifest.sha256[:16]}-{self._ids[id(backbone)][:16]}"

    def features(self, snapshot: Snapshot, backbone: torch.nn.Module) -> Embeddings:
        """Embeddings of every row of the snapshot, in the order of its data file. Computed a shard at a time from
        the snapshot's Parquet batches; processes that ask at once (DDP ranks, parallel runs) wait for one of them."""
        path = self.path(snapshot, backbone)

        def fill(folder: Path) -> None:
            import pyarrow.parquet as pq

            started, rows = time.monotonic(), snapshot.manifest.rows
            batches = pq.ParquetFile(snapshot.path / DATA_FILE).iter_batches(batch_size=SHARD_ROWS, columns=["input"])
            if self.ray:
                _embed_on_ray(snapshot, backbone, batches, folder, self.ray)
            for k, batch in enumerate(() if self.ray else batches):
                first = k * SHARD_ROWS
                features = embed(backbone, batch.column(0).to_pylist(), load=snapshot.load_inputs,
                                 description=f"embedding snapshot '{snapshot.manifest.name}' (once, then cached)"
                                 + (f": rows {first + 1:,}-{first + batch.num_rows:,} of {rows:,}"
                                    if rows > SHARD_ROWS else ""))
                np.save(folder / f"shard-{k:06d}.npy", features.numpy())
            console.print(f"embedded {rows} rows of snapshot '{snapshot.manifest.name}' in "
                          f"{time.monotonic() - started:.1f} s{' on Ray' if self.ray else ''}, cached in {path}",
                          highlight=False)

        computed_once(path, fill)
        return Embeddings(path)


def _embed_on_ray(snapshot: Snapshot, backbone: torch.nn.Module, batches, folder: Path, options: RayOptions,
                  window: int = 4) -> None:
    """The cache's shards, embedded by Ray Data `map_batches` over a pool of actors that each receive the backbone
    once per window of `window` shards; the shards come back in order and are written here. The snapshot's
    images (if any) are read by the actors from the blob store, which a cluster must share."""
    import pyarrow as pa

    ray = options.start()
    batches, k = iter(batches), 0
    with Progress(transient=True) as progress:
        task = progress.add_task(f"embedding snapshot '{snapshot.manifest.name}' on Ray (once, then cached)",
                                 total=snapshot.manifest.rows)
        while shards := list(itertools.islice(batches, window)):
            table = pa.Table.from_batches(shards)
            blocks = [table.slice(i, RAY_TASK_ROWS) for i in range(0, table.num_rows, RAY_TASK_ROWS)]
            embedded = ray.data.from_arrow(blocks).map_batches(
                _RayEmbedder, fn_constructor_args=(backbone, snapshot, options.threads), batch_format="pyarrow",
                batch_size=None, **options.pool(ray))
            rows = np.concatenate([batch["embedding"] for batch in embedded.iter_batches(batch_format="numpy",
                                                                                         batch_size=None)])
            for shard in shards:
                np.save(folder / f"shard-{k:06d}.npy", rows[:shard.num_rows].astype(np.float32))
                rows, k = rows[shard.num_rows:], k + 1
            progress.advance(task, table.num_rows)


class _RayEmbedder:
    """One Ray actor: the backbone received once, then a block of the snapshot's inputs embedded per call."""

    def __init__(self, backbone: torch.nn.Module, snapshot: Snapshot, threads: int):
        torch.set_num_threads(threads)
        self.backbone, self.snapshot = backbone, snapshot

    def __call__(self, block) -> dict[str, np.ndarray]:
        inputs = block.column("input").to_pylist()
        return {"embedding": embed(self.backbone, inputs, load=self.snapshot.load_inputs, description=None).numpy()}


def computed_once(path: Path, fill: Callable[[Path], None]) -> None:
    """Makes sure the folder `path` exists: `fill(staging)` writes it into a staging folder beside it, renamed
    into place when whole (readers see all of it or nothing), unless it is there. Processes that ask at once
    wait for the one that computes it, under a lock file beside it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # computed by another process while this one waited
            return
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=path.parent))
        try:
            fill(staging)
            os.rename(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class TrunkStates:
    """The token states that enter a backbone's first trainable block, every row of a snapshot: float16, read from a
    memory-mapped file (only the rows of a batch are read)."""

    def __init__(self, folder: Path, cut: int):
        self.cut = cut  # the block they enter
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")  # every row's real tokens, row after row
        spans = np.load(folder / "spans.npy")  # per row: where its tokens start, how many
        self.starts, self.lengths = spans[:, 0], spans[:, 1]

    def batch(self, positions: list[int]) -> dict[str, torch.Tensor]:
        """The rows at `positions`, padded to the longest: {"states": B x T x H float16, "attention_mask": B x T,
        "cut": the block they enter}."""
        lengths = self.lengths[positions]
        states = torch.zeros(len(positions), int(lengths.max()), self.tokens.shape[1], dtype=torch.float16)
        mask = torch.zeros(len(positions), int(lengths.max()), dtype=torch.long)
        for i, (position, length) in enumerate(zip(positions, lengths)):
            start = self.starts[position]
            states[i, :length] = torch.from_numpy(np.array(self.tokens[start:start + length]))
            mask[i, :length] = 1
        return {"states": states, "attention_mask": mask, "cut": self.cut}


class TrunkMaps:
    """The feature maps that enter an image backbone's first trainable block, every row of a snapshot: float16, read
    from a memory-mapped file (only the rows of a batch are read)."""

    def __init__(self, folder: Path, cut: int):
        self.cut = cut
        self.maps = np.load(folder / "maps.npy", mmap_mode="r")  # rows x channels x height x width
        self.lengths = np.ones(len(self.maps), dtype=np.int64)  # every row the same size: no buckets needed

    def batch(self, positions: list[int]) -> dict[str, torch.Tensor]:
        return {"states": torch.from_numpy(np.array(self.maps[positions])), "cut": self.cut}


def _read_trunk(folder: Path, cut: int) -> TrunkStates | TrunkMaps:
    return TrunkMaps(folder, cut) if (folder / "maps.npy").exists() else TrunkStates(folder, cut)


class TrunkCache:
    def __init__(self, workspace: Workspace):
        self.folder = workspace.root / "cache" / "trunks"
        self._ids: dict[tuple[int, int], str] = {}

    def path(self, snapshot: Snapshot, backbone: torch.nn.Module, cut: int) -> Path:
        """Keyed by the weights before block `cut` only: the blocks that train do not change what is cached."""
        if (id(backbone), cut) not in self._ids:
            self._ids[id(backbone), cut] = backbone_id(backbone, backbone.trunk_state(cut))
        return self.folder / f"{snapshot.manifest.sha256[:16]}-{self._ids[id(backbone), cut][:16]}-block{cut}"

    def states(self, snapshot: Snapshot, backbone: torch.nn.Module, cut: int) -> TrunkStates | TrunkMaps:
        """What enters block `cut` for every row of the snapshot: token states (TrunkStates) or feature maps
        (TrunkMaps). Processes that ask at once wait for one of them to compute them."""
        path = self.path(snapshot, backbone, cut)

        def fill(folder: Path) -> None:
            started = time.monotonic()
            _compute_trunk(snapshot, backbone, cut, folder)
            states = _read_trunk(folder, cut)
            what = "feature maps" if isinstance(states, TrunkMaps) else "token states"
            size = sum(f.stat().st_size for f in folder.iterdir())
            console.print(f"cached the {what} entering block {cut} of {len(states.lengths)} rows of snapshot "
                          f"'{snapshot.manifest.name}' ({size / 2**20:.0f} MiB) in {time.monotonic() - started:.1f} "
                          f"s: {path}", highlight=False)

        computed_once(path, fill)
        return _read_trunk(path, cut)


def _compute_trunk(snapshot: Snapshot, backbone: torch.nn.Module, cut: int, folder: Path) -> None:
    inputs = snapshot.frame()["input"].tolist()
    if backbone.kind == "image":
        return _compute_maps(snapshot, backbone, cut, folder, inputs)
    order = sorted(range(len(inputs)), key=lambda i: len(str(inputs[i])))  # batches of similar length: little padding

    def real_tokens(batch: list) -> dict[str, torch.Tensor]:
        encoded = backbone.preprocess(snapshot.load_inputs(batch))
        real = encoded["attention_mask"].bool()
        return {"tokens": backbone.trunk(encoded, cut)[real].half(), "lengths": real.sum(1)}

    with evaluating(backbone):
        found = batched(real_tokens, [inputs[i] for i in order], 128,
                        f"caching the trunk of snapshot '{snapshot.manifest.name}' (once)")
        lengths = found["lengths"].numpy()
        spans = np.zeros((len(inputs), 2), dtype=np.int64)
        spans[order, 0] = np.cumsum(lengths) - lengths
        spans[order, 1] = lengths
        np.save(folder / "tokens.npy", found["tokens"].numpy())
        np.save(folder / "spans.npy", spans)
        _check_trunk(backbone, TrunkStates(folder, cut), inputs, snapshot)


def _compute_maps(snapshot: Snapshot, backbone: torch.nn.Module, cut: int, folder: Path, inputs: list) -> None:
    with evaluating(backbone):
        found = batched(lambda batch: {"maps": backbone.trunk(backbone.preprocess(snapshot.load_inputs(batch)),
                                                              cut).half()},
                        inputs, 64, f"caching the trunk of snapshot '{snapshot.manifest.name}' (once)")
        np.save(folder / "maps.npy", found["maps"].numpy())
        _check_trunk(backbone, TrunkMaps(folder, cut), inputs, snapshot)


@torch.inference_mode()
def _check_trunk(backbone, states: TrunkStates | TrunkMaps, inputs: list, snapshot: Snapshot) -> None:
    """The backbone's own embeddings of a few rows, against those computed from the cached states: a backbone
    that cannot start at a block (an encoder's embeddings module that does more than embed; a network whose
    forward does more between its blocks than run them in turn) is refused, not trained wrongly."""
    rows = list(range(min(8, len(inputs))))
    direct = backbone(backbone.preprocess(snapshot.load_inputs([inputs[i] for i in rows])))
    batch = states.batch(rows)
    cached = backbone.from_trunk(batch["states"], batch.get("attention_mask"), batch["cut"])
    if not torch.allclose(direct, cached, atol=1e-2, rtol=1e-2):
        raise HeadsmithError(f"backbone {backbone.pretrained}: the embeddings from its cached trunk differ from its "
                             f"own (max {float((direct - cached).abs().max()):.3g}); this encoder cannot be split "
                             "at a block. Set embedding_cache=false to run every block each step")
