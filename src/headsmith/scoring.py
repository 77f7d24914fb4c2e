"""Batch scoring of big files: `headsmith score MODEL INPUT --out OUT`. The input (CSV, Parquet or JSON Lines; a
local path or an fsspec URL) is read in chunks; each chunk's scores and decisions are written as one Parquet part,
then recorded in the output's manifest, so a job killed at any moment goes on where it stopped when run again: no
row missing, none written twice."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from headsmith.engines import RAY_TASK_ROWS, RayOptions
from headsmith.errors import HeadsmithError
from headsmith.evaluation.thresholds import decide
from headsmith.files import atomic_path, write_atomic
from headsmith.predictor import Predictor

MANIFEST = "_manifest.json"  # "_": Parquet readers of the folder skip it
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def input_format(source: str) -> str:
    suffix = Path(source.split("?")[0]).suffix.lower()
    if suffix not in FORMATS:
        raise HeadsmithError(f"{source}: cannot tell its format from the name; score reads {', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_chunks(source: str, rows: int, columns: list[str]) -> Iterator[pd.DataFrame]:
    """The input's `columns`, `rows` rows at a time, in order."""
    kind = input_format(source)
    try:
        if kind == "parquet":
            import fsspec
            import pyarrow.parquet as pq

            with fsspec.open(source, "rb") as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=rows, columns=columns):
                    yield batch.to_pandas()
            return
        reader = (pd.read_csv(source, usecols=columns, chunksize=rows, dtype=str, keep_default_na=False)
                  if kind == "csv" else pd.read_json(source, lines=True, chunksize=rows, dtype=False))
        with reader:
            for chunk in reader:
                yield chunk[columns]
    except (OSError, ValueError, KeyError) as e:  # a missing file, a column it lacks, a line that is not JSON
        raise HeadsmithError(f"{source}: cannot read it as {kind} with the columns {columns}: {e}") from None


def check_input(source: str, columns: list[str]) -> None:
    """Refuse an input that cannot be read, or lacks one of `columns`, before any model loads (seconds saved)."""
    chunks = read_chunks(source, 1, columns)
    try:
        next(chunks, None)
    finally:
        chunks.close()


def content_hash(source: str) -> str:
    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(source, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def job_manifest(package: Path, name: str, version: int | None, source: str, out: Path | str, input_column: str,
                 keep: list[str] = (), chunk_rows: int = 10_000) -> dict:
    """The scoring job's manifest, known before any model loads: the one an earlier run of this same job left in
    `out` (done, or where it stopped), or a new one. A folder holding another job is refused."""
    options = {"input_column": input_column, "keep": list(keep), "chunk_rows": chunk_rows}
    job = hashlib.sha256(json.dumps({"model": _model_identity(Path(package)), "input": content_hash(source),
                                     **options}, sort_keys=True).encode()).hexdigest()[:16]
    return _manifest(Path(out), job) or {"job": job, "model": {"name": name, "version": version,
                                                               "path": str(package)},
                                         "input": source, "options": options, "parts": [], "rows": 0, "done": False}


def score_file(predictor: Predictor, source: str, out: Path | str, input_column: str, keep: list[str] = (),
               chunk_rows: int = 10_000, engine: "RayEngine | None" = None, manifest: dict | None = None) -> dict:
    """Score every row of `source` into `out` (Parquet parts + _manifest.json, in input order): kept columns, `row`
    (the input's row number), `status` (ok, empty, or why an image failed), then per head its decision and each
    class's score. `engine`: score on a Ray cluster instead of in this process (the same output). `manifest`: the
    job's, from `job_manifest` (found here otherwise). Returns the manifest."""
    out = Path(out)
    manifest = manifest or job_manifest(predictor.package, predictor.name, predictor.version, source, out,
                                        input_column, keep, chunk_rows)
    if manifest["done"]:
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    done = len(manifest["parts"])
    columns = list(dict.fromkeys([*keep, input_column]))

    def todo() -> Iterator[pd.DataFrame]:  # the chunks not scored before the job was stopped, numbered
        first = 0
        for index, chunk in enumerate(read_chunks(source, chunk_rows, columns)):
            chunk = chunk.reset_index(drop=True).assign(row=np.arange(first, first + len(chunk)))
            first += len(chunk)
            if index >= done:
                yield chunk

    scored = (engine.score(todo(), input_column, list(keep)) if engine
              else (_score_chunk(predictor, chunk, input_column, list(keep)) for chunk in todo()))
    with Progress(transient=True) as progress:
        task = progress.add_task(f"scoring {source}", total=None, completed=manifest["rows"])
        for index, part in enumerate(scored, start=done):
            name = f"part-{index:06d}.parquet"  # names sort in input order
            with atomic_path(out / name) as tmp:
                part.to_parquet(tmp, index=False)
            manifest["parts"].append({"file": name, "rows": len(part), "first_row": manifest["rows"]})
            manifest["rows"] += len(part)
            write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))  # the part counts from here on
            progress.advance(task, len(part))
    manifest["done"] = True
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


class RayEngine:
    """Scoring on Ray: Ray Data `map_batches` over a pool of actors, each loading the model once; the chunks come
    back in input order. The model package is read by the actors from its path, so on a cluster it must be on
    storage they share."""

    def __init__(self, package: Path, batch_size: int, options: RayOptions, window_rows: int = 100_000):
        self.package, self.batch_size, self.options = Path(package).resolve(), batch_size, options
        self.window_rows = window_rows  # rows in flight at once: the pool is started again for each window
        self.ray = options.start()

    def score(self, chunks: Iterator[pd.DataFrame], input_column: str, keep: list[str]) -> Iterator[pd.DataFrame]:
        """Each chunk's scored part, in order."""
        window: list[pd.DataFrame] = []
        for chunk in chunks:
            window.append(chunk)
            if sum(len(c) for c in window) >= self.window_rows:
                yield from self._window(window, input_column, keep)
                window = []
        if window:
            yield from self._window(window, input_column, keep)

    def _window(self, chunks: list[pd.DataFrame], input_column: str, keep: list[str]) -> Iterator[pd.DataFrame]:
        """Only the inputs travel; the kept columns stay here and join their scores as the local path has them."""
        import pyarrow as pa

        # One block per task: the pool hands out blocks, so blocks of RAY_TASK_ROWS keep every actor busy.
        blocks = [c[["row", input_column]].iloc[i:i + RAY_TASK_ROWS] for c in chunks
                  for i in range(0, len(c), RAY_TASK_ROWS)]
        data = self.ray.data.from_pandas(blocks).map_batches(
            _RayScorer, fn_constructor_args=(str(self.package), self.batch_size, self.options.threads, input_column),
            batch_format="pandas", batch_size=None, **self.options.pool(self.ray))
        # Back through Arrow's own conversion, to the local path's types: parts of either engine make one dataset.
        scored = pa.concat_tables(data.iter_batches(batch_format="pyarrow", batch_size=None)).to_pandas()
        scored = scored.astype({c: "string" for c in scored if c.endswith(":decision")})
        first = 0
        for chunk in chunks:
            part = scored.iloc[first:first + len(chunk)].reset_index(drop=True)
            yield pd.concat([chunk[keep].reset_index(drop=True), part], axis=1)
            first += len(chunk)


class _RayScorer:
    """One Ray actor: the model loaded once, then RAY_TASK_ROWS rows scored per call."""

    def __init__(self, package: str, batch_size: int, threads: int, input_column: str):
        import torch

        from headsmith.predictor import Predictor

        torch.set_num_threads(threads)
        self.predictor = Predictor(Path(package))
        self.predictor.batch_size = batch_size
        self.input_column = input_column

    def __call__(self, rows: pd.DataFrame) -> pd.DataFrame:
        return _score_chunk(self.predictor, rows.reset_index(drop=True), self.input_column, keep=[])


def _model_identity(package: Path) -> str:
    """What identifies the scores: the package's model.json and weights file (size and time written)."""
    stat = (package / "model.safetensors").stat()
    return hashlib.sha256((package / "model.json").read_bytes()
                          + f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()


def _manifest(out: Path, job: str) -> dict | None:
    """The manifest of an earlier run of this same job in `out`, if any; another job's is refused."""
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and not all(p.name.startswith(("part-", ".part-")) for p in out.iterdir()):
            raise HeadsmithError(f"--out {out}: the folder holds other files; give an empty or new folder")
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("job") != job:
        raise HeadsmithError(f"--out {out}: holds another scoring job (another model, input or options); give "
                             "another folder, or delete it to score again")
    return manifest


IMAGE_THREADS = 16  # images fetched and decoded at once (network waits, and decoding lets go of the GIL)


def _score_images(predictor: Predictor, refs: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The scores of the images at `refs` that load (in order) and each one's status ("ok" or why it failed).
    A batch at a time is fetched and decoded by a pool of threads while the batch before it is scored: a chunk's
    images are never all in memory."""
    def load(ref: str):
        try:
            return predictor.load_images([ref])[0]
        except HeadsmithError as e:
            return f"failed: {e}"

    size, status, parts = predictor.batch_size, [], []
    with ThreadPoolExecutor(IMAGE_THREADS) as pool:
        batches = [refs[start:start + size] for start in range(0, len(refs), size)]
        pending = [pool.submit(load, ref) for ref in batches[0]] if batches else []
        for k in range(len(batches)):
            loaded = [future.result() for future in pending]
            pending = [pool.submit(load, ref) for ref in batches[k + 1]] if k + 1 < len(batches) else []
            images = [image for image in loaded if not isinstance(image, str)]
            status += ["ok" if not isinstance(image, str) else image for image in loaded]
            if images:
                parts.append(predictor.net.scores(images, size))
    return ({head: torch.cat([part[head] for part in parts]) for head in parts[0]} if parts else {}), status


def _score_chunk(predictor: Predictor, chunk: pd.DataFrame, input_column: str, keep: list[str]) -> pd.DataFrame:
    """A chunk (with its `row` numbers) scored: kept columns, row, status, per head the decision and scores."""
    values = chunk[input_column].tolist()
    status = ["empty" if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""
              else "ok" for value in values]
    given = [i for i, s in enumerate(status) if s == "ok"]
    if predictor.kind == "image":
        scores, loaded = _score_images(predictor, [str(values[i]) for i in given])
        for i, s in zip(given, loaded):
            status[i] = s
    else:
        scores = predictor.net.scores([str(values[i]) for i in given], predictor.batch_size, by_length=True)
    scored = [i for i, s in enumerate(status) if s == "ok"]
    columns = {name: chunk[name] for name in keep}
    columns["row"] = chunk["row"].to_numpy()
    columns["status"] = status
    for head, classes in predictor.card.heads.items():
        table = np.full((len(chunk), len(classes)), np.nan, dtype=np.float32)
        decision = np.full(len(chunk), None, dtype=object)
        if scored:
            values = scores[head].numpy()
            table[scored] = values
            _, decided = decide(values, predictor.card.thresholds[head])  # as predict and serving decide
            decision[scored] = [None if d is None else classes[d] for d in decided]
        columns[f"{head}:decision"] = pd.array(decision, dtype="string")
        for k, label in enumerate(classes):
            columns[f"{head}:score:{label}"] = table[:, k]
    return pd.DataFrame(columns)
