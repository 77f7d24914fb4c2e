"""What every page of the app is rendered with: the workspace, the templates, each page given the CSRF token."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from headsmith.workspace import Workspace

templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.filters["thousands"] = lambda n: f"{n:,}"


def csrf_token(token: str) -> str:
    """The CSRF token of every page: derived from the session token, so a page of another site cannot know it."""
    return hmac.new(token.encode(), b"csrf", hashlib.sha256).hexdigest()


def local_path(target: str, default: str = "/") -> str:
    """`target` if it is a path on this site, else `default`: a form's `next` or `back` never leads off it."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else default


class Pages:
    def __init__(self, workspace: Workspace, token: str):
        self.workspace, self.csrf = workspace, csrf_token(token)

    def render(self, request: Request, name: str, context: dict, status: int = 200) -> Response:
        return templates.TemplateResponse(request, name, {"csrf": self.csrf, **context}, status_code=status)
