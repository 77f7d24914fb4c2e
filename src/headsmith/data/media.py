"""Fetching images: concurrent, bounded, with timeouts, retries and checks, into a content-addressed blob store."""

from __future__ import annotations

import hashlib
import itertools
import http.client
import io
import random
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlparse

from PIL import Image, ImageOps
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from headsmith.data.urls import pinned_opener, public_address
from headsmith.errors import HeadsmithError
from headsmith.files import write_atomic

MAX_PIXELS = 40_000_000  # per image; above it an image is refused before it is decoded


class BlobStore:
    """Bytes stored once under their sha256: blobs/ab/abcdef..."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.intact(sha):  # absent, or damaged since it was stored: this copy replaces it
            write_atomic(self.path(sha), data)  # whole file or none, on disk before the catalog says ok
        return sha

    def intact(self, sha256: str) -> bool:
        """The blob is there and its bytes still hash to its name."""
        try:
            with open(self.path(sha256), "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest() == sha256
        except FileNotFoundError:
            return False

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, checked against its name: a damaged or missing blob raises DamagedBlob."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DamagedBlob(sha256, f"{path} is missing") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DamagedBlob(sha256, f"{path} no longer matches its sha256 (changed or damaged on disk)")
        return data


class DamagedBlob(HeadsmithError):
    def __init__(self, sha256: str, detail: str):
        super().__init__(detail)
        self.sha256 = sha256


def local_ref(ref: str, folder: Path) -> str:
    """An image reference as stored for fetching: a relative local path made absolute against the folder of the
    CSV that named it (rows added from another CSV resolve against theirs); URLs and absolute paths as given."""
    scheme = urlparse(ref).scheme
    if len(scheme) > 1:  # http(s), file, s3, ... (a one-letter scheme is a Windows drive)
        return ref
    path = Path(ref).expanduser()
    return ref if path.is_absolute() else str(folder.resolve() / path)


@dataclass(frozen=True)
class FetchResult:
    status: str  # ok, http_error, timeout, unreachable, not_an_image, bad_response, too_large, too_many_pixels, corrupt, ...
    detail: str = ""
    sha256: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Retryable(Exception):
    def __init__(self, result: FetchResult):
        self.result = result


@dataclass
class MediaFetcher:
    """Limits are per image. `max_pixels` also stops decompression bombs: the size is read from the header first."""

    store: BlobStore | None = None  # where fetch() keeps what it checked; read() needs none
    timeout: float = 10.0
    retries: int = 2
    backoff: float = 0.5
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = MAX_PIXELS
    concurrency: int = 16
    base_dir: Path | None = None  # relative local paths are read from here (the CSV's folder)
    follow_redirects: bool = True  # a server fetching for others refuses them: a redirect could point inside
    public_only: bool = False  # http(s) to public addresses only, connected to as checked (data/urls.py)
    local_files: bool | Path = True  # what else is read: True: local paths and fsspec URLs; False: nothing but
    #                                  http(s); a folder: local files inside it (after links are followed)

    def read(self, ref: str) -> bytes:
        """The bytes behind a URL or path, with retries on transient failures; ImageRejected says why not."""
        for attempt in range(self.retries + 1):
            try:
                return self._read(ref.strip())
            except _Retryable as e:
                if attempt == self.retries:
                    raise ImageRejected(e.result.status, e.result.detail) from None
                time.sleep(self.backoff * 2 ** attempt * (1 + random.random() / 2))
            except _Final as e:
                raise ImageRejected(e.result.status, e.result.detail) from None
        raise AssertionError("unreachable")

    def fetch(self, ref: str) -> FetchResult:
        """Read, check (a full decode within the limits) and store one image."""
        try:
            data = self.read(ref)
            image = open_image(data, self.max_pixels)
        except ImageRejected as e:
            return FetchResult(e.status, e.detail)
        width, height = shown_size(image)
        return FetchResult("ok", f"{image.format} {width}x{height}", self.store.put(data))

    def fetch_many(self, refs: Iterable[tuple[object, str]], on_result: Callable[[object, FetchResult], None],
                   description: str = "fetching images", total: int | None = None) -> None:
        """Fetch (key, ref) pairs concurrently; `on_result` runs in the calling thread, as results arrive. `refs` is
        read as the work goes, a few per thread ahead, so it may be a stream of millions."""
        refs = iter(refs)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as progress, ThreadPoolExecutor(self.concurrency) as pool:
            task = progress.add_task(description, total=total)
            running: dict = {}
            finished = 0
            while True:
                for key, ref in itertools.islice(refs, 4 * self.concurrency - len(running)):
                    running[pool.submit(self.fetch, ref)] = key
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(running.pop(future), future.result())
                    progress.advance(task)
                    finished += 1
            progress.update(task, total=finished)

    def _read(self, ref: str) -> bytes:
        parsed = urlparse(ref)
        if parsed.scheme in ("http", "https"):
            return self._read_http(ref)
        local = parsed.scheme == "file" or len(parsed.scheme) <= 1  # a one-letter scheme is a Windows drive
        if self.local_files is False or (not local and self.local_files is not True):
            also = (", and local files are not read here" if self.local_files is False
                    else f" or a file in {self.local_files}")
            raise _Final(FetchResult("refused", f"{ref[:200]!r} is not an http(s) URL{also}"))
        if not local:
            return self._read_fsspec(ref, parsed.scheme)
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(ref).expanduser()
        if not path.is_absolute():
            if self.base_dir is None and self.local_files is not True:
                raise _Final(FetchResult("refused", f"relative path {ref[:200]!r}: no folder to read it from"))
            path = (self.base_dir or Path.cwd()) / path
        if self.local_files is not True and not path.resolve().is_relative_to(Path(self.local_files).resolve()):
            raise _Final(FetchResult("refused", f"{path} is outside the data folder {self.local_files}"))
        return self._read_file(path)

    def _read_http(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"User-Agent": "headsmith"})
        try:
            if self.public_only:  # resolved and checked once; the connection goes to that address, no redirects
                try:
                    address = public_address(url)
                except HeadsmithError as e:
                    raise _Final(FetchResult("refused", str(e))) from None
                opener = pinned_opener(address, _NoRedirect())
            else:
                opener = urllib.request.build_opener(*([] if self.follow_redirects else [_NoRedirect()]))
            with opener.open(request, timeout=self.timeout) as response:
                kind = response.headers.get_content_type()
                if not (kind.startswith("image/") or kind == "application/octet-stream"):
                    raise _Final(FetchResult("not_an_image", f"the server sent {kind}, not an image"))
                declared = self._declared_length(response.headers.get_all("Content-Length") or [])
                if declared is not None and declared > self.max_bytes:
                    raise _Final(self._too_large(declared))
                data = response.read(self.max_bytes + 1)
        except urllib.error.HTTPError as e:
            result = FetchResult("http_error", f"http {e.code} {e.reason}")
            raise (_Retryable if e.code in (408, 425, 429) or e.code >= 500 else _Final)(result) from None
        except http.client.HTTPException as e:  # a status line or headers that do not parse, a short body
            raise _Final(FetchResult("bad_response", f"the server's response is malformed: {type(e).__name__}: "
                                                     f"{str(e)[:200]}")) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise _Retryable(FetchResult("timeout", f"no answer within {self.timeout:g} s")) from None
            raise _Retryable(FetchResult("unreachable", str(reason))) from None
        if len(data) > self.max_bytes:
            raise _Final(self._too_large(len(data)))
        return data

    @staticmethod
    def _declared_length(values: list[str]) -> int | None:
        """The Content-Length a server declared; a malformed or ambiguous one is that image's failure."""
        if not values:
            return None
        if len(set(values)) > 1 or not values[0].strip().isdigit():
            shown = ", ".join(repr(v[:40]) for v in values)
            raise _Final(FetchResult("bad_response", f"the server sent Content-Length {shown}: not one whole number"))
        return int(values[0])

    def _read_file(self, path: Path) -> bytes:
        if not path.is_file():
            raise _Final(FetchResult("missing_file", f"no file {path}"))
        if path.stat().st_size > self.max_bytes:
            raise _Final(self._too_large(path.stat().st_size))
        return path.read_bytes()

    def _read_fsspec(self, url: str, scheme: str) -> bytes:
        try:
            import fsspec
        except ImportError:
            raise _Final(FetchResult("unsupported", f"{scheme}:// needs fsspec and its {scheme} driver")) from None
        try:
            with fsspec.open(url, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except (ImportError, ValueError) as e:
            raise _Final(FetchResult("unsupported", f"{scheme}://: {e}")) from None
        except OSError as e:
            raise _Retryable(FetchResult("unreachable", str(e))) from None
        if len(data) > self.max_bytes:
            raise _Final(self._too_large(len(data)))
        return data

    def _too_large(self, size: int) -> FetchResult:
        return FetchResult("too_large", f"{size / 2**20:.1f} MiB, over the {self.max_bytes / 2**20:.0f} MiB limit")

class ImageRejected(HeadsmithError):
    """An image that cannot be used, with a status (as stored per row) and a detail for people."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode image bytes fully, refusing too many pixels (read from the header first, so decompression bombs stop
    before they expand), truncated or corrupt files, and anything Pillow cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            pixels = image.width * image.height
            if pixels > max_pixels:
                kind = "decompression bomb: " if pixels / max(len(data), 1) > 1000 else ""
                raise ImageRejected("too_many_pixels", f"{kind}{image.width}x{image.height} ({pixels / 1e6:.1f} MP "
                                    f"in {len(data) / 1024:.0f} KiB), over the {max_pixels / 1e6:.0f} MP limit")
            image.load()  # a full decode: truncated and corrupt files fail here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("too_many_pixels", f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("not_an_image", "not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected("corrupt", f"truncated or corrupt image: {e}") from None
    return image


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; as stored when it has none, or EXIF Pillow cannot parse."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF in an uploaded image is the sender's, never a server error
        return image


def shown_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as the image is shown: EXIF orientations 5 to 8 turn it a quarter."""
    try:
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - EXIF Pillow cannot parse: shown as stored (see upright)
        turned = False
    return (image.height, image.width) if turned else (image.width, image.height)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError


class _Final(Exception):
    def __init__(self, result: FetchResult):
        self.result = result
