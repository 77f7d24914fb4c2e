"""What every page of the app is rendered with: the workspace, the templates, each page given the CSRF token."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from headsmith.data.media import BlobStore, MediaFetcher
from headsmith.workspace import Workspace

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.filters["thousands"] = lambda n: f"{n:,}"


def csrf_token(token: str) -> str:
    """The CSRF token of every page: derived from the session token, so a page of another site cannot know it."""
    return hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()


def local_path(target: str, default: str = "/") -> str:
    """`target` if it is a path on this site, else `default`: a form's `next` or `back` never leads off it."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default


@dataclass(frozen=True)
class Settings:
    """What `headsmith ui` was started with."""

    data: Path | None = None  # the folder local images are read from (and nothing else on this machine)
    allow_private_urls: bool = False  # image URLs may name private and loopback addresses
    max_upload_bytes: int = 512 << 20
    parallel_runs: int = 1  # trainings at once (a 2-core machine trains one well); the others are queued
    models: tuple[str, ...] = ()  # model folders the playground may open besides registered models

    def fetcher(self, workspace: Workspace) -> MediaFetcher:
        """How the app fetches images for a person in the browser: http(s) to public addresses only (unless
        allowed), no redirects, local files from the data folder only."""
        return MediaFetcher(BlobStore(workspace.blobs_dir), public_only=not self.allow_private_urls,
                            follow_redirects=self.allow_private_urls, local_files=self.data or False)


class Pages:
    def __init__(self, workspace: Workspace, token: str, settings: Settings = Settings()):
        self.workspace, self.csrf, self.settings = workspace, csrf_token(token), settings

    def render(self, request: Request, name: str, context: dict, status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"csrf": self.csrf, **context}, status_code=status)
