"""Thumbnails of stored images, for pages that show many rows at once: made from the blob store once, then read from
a cache beside it (cache/thumbnails/ab/abcdef....jpg). A blob never changes, so neither does its thumbnail."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from headsmith.data.media import BlobStore, ImageRejected, upright
from headsmith.errors import HeadsmithError
from headsmith.files import write_atomic
from headsmith.workspace import Workspace

SIZE = 160  # pixels, the longer side
SHA256 = re.compile(r"[0-9a-f]{64}")


class Thumbnails:
    def __init__(self, workspace: Workspace, size: int = SIZE):
        self.store, self.size = BlobStore(workspace.blobs_dir), size
        self.folder = workspace.root / "cache" / "thumbnails"

    def path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):  # it names a file: nothing but a blob's name may
            raise HeadsmithError(f"'{sha256[:80]}' is not an image's sha256 (64 lowercase hex digits)")
        return self.folder / sha256[:2] / f"{sha256}.{self.size}.jpg"

    def get(self, sha256: str) -> bytes:
        """The JPEG thumbnail of blob `sha256`, made on first use. A blob missing or damaged raises DamagedBlob; one
        that is no image Pillow can read, ImageRejected."""
        path = self.path(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = self.store.read(sha256)  # checked against its name
        try:  # a blob was checked as an image (pixel limits, full decode) when it was fetched
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (self.size, self.size))  # a JPEG decodes at 1/2 to 1/8 scale: most of the cold time
            image = upright(image)
            image.thumbnail((self.size, self.size))
            if image.mode not in ("RGB", "L"):
                image = _flattened(image)
            out = io.BytesIO()
            image.save(out, "JPEG", quality=85)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageRejected("corrupt", f"blob {sha256} cannot be shown: {e}") from None
        write_atomic(path, out.getvalue())
        return out.getvalue()


def _flattened(image: Image.Image) -> Image.Image:
    """RGB on white: transparent and palette images as a page would show them."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat

