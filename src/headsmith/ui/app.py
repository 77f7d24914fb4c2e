"""`headsmith ui`: a local web app over the workspace, driving the same library functions as the CLI.

Trust model: whoever holds the token can train and deploy on this machine. The server binds 127.0.0.1 by default
and prints a random token at start (as Jupyter does); opening the printed URL keeps the token in a cookie
(HttpOnly, SameSite=Strict). Every request is checked, in order: its Host header names this server (a page of
another site that resolves its own name to 127.0.0.1, DNS rebinding, is refused), it carries the token, and a
request that changes anything carries the CSRF token its page was given."""

from __future__ import annotations

import functools
import hmac
import secrets
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from headsmith.ui import datasets, deployments, imports, playground, runs, snapshots
from headsmith.ui.pages import Pages, Settings, csrf_token, local_path, templates
from headsmith.errors import HeadsmithError
from headsmith.workspace import Workspace

COOKIE = "headsmith_token"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_BODY = 1 << 20  # a request's body; uploads and playground questions have their own caps (see create_app)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def same(given: str, secret: str) -> bool:
    """A constant-time comparison that takes any text a request may carry."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())


def signed_in(response: Response, token: str) -> Response:
    """`response` with the token in the cookie every later request carries."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


def login_page(request: Request, status: int, error: str | None = None, target: str | None = None) -> Response:
    """The sign-in form; signing in leads on to `target` (else the page asked for)."""
    return templates.TemplateResponse(request, "login.html", {"error": error, "next": target or request.url.path},
                                      status_code=status)


class Guard:
    """ASGI middleware: Host, token and CSRF checks before any route runs."""

    def __init__(self, app, token: str, hosts: set[str], streamed):
        """`streamed(path)`: the body cap of a route whose body streams to it (an upload), else None."""
        self.app, self.token, self.hosts, self.streamed = app, token, hosts, streamed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        if _host_name(request.headers.get("host", "")) not in self.hosts:
            return await PlainTextResponse(f"Host {request.headers.get('host')!r} is not this server: open it as "
                                           "http://127.0.0.1 (or the --host it was started with)",
                                           status_code=400)(scope, receive, send)
        body = b""
        if request.method not in SAFE_METHODS:
            cap = self.streamed(request.url.path) if "x-csrf-token" in request.headers else None
            streaming, cap = cap is not None, cap or MAX_BODY
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                return await _too_large(cap)(scope, receive, send)
            if streaming:  # to the route (never held here), counted as it goes; its CSRF header is checked first
                receive = _capped(receive, cap)
            else:
                async for chunk in request.stream():  # counted as it arrives: a chunked body declares no length
                    body += chunk
                    if len(body) > MAX_BODY:
                        return await _too_large(cap)(scope, receive, send)
                receive = _replay(body)
        given = request.query_params.get("token")
        if given is not None and request.method in SAFE_METHODS:  # the printed URL: keep the token, drop it from
            if not same(given, self.token):                       # the address bar and the history
                return await login_page(request, status=401, error="wrong token")(scope, receive, send)
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            return await signed_in(response, self.token)(scope, receive, send)
        if request.url.path == "/login" and request.method == "POST":
            return await self.app(scope, receive, send)  # it carries the token itself
        if not same(request.cookies.get(COOKIE, ""), self.token):
            if request.method in SAFE_METHODS and "text/html" in request.headers.get("accept", ""):
                return await login_page(request, status=401)(scope, receive, send)
            return await PlainTextResponse("401: open the URL `headsmith ui` printed (it carries the token)",
                                           status_code=401)(scope, receive, send)
        if request.method not in SAFE_METHODS:
            sent = request.headers.get("x-csrf-token")
            if sent is None and request.headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"):
                sent = (parse_qs(body.decode("latin-1")).get("csrf") or [""])[0]
            if not same(sent or "", csrf_token(self.token)):
                return await PlainTextResponse("403: missing or wrong CSRF token; reload the page and try again",
                                               status_code=403)(scope, receive, send)
        return await self.app(scope, receive, send)


def _host_name(header: str) -> str:
    """The name in a Host header: "localhost:8800" -> "localhost", "[::1]:8800" -> "[::1]"."""
    name = header[:header.find("]") + 1] if header.startswith("[") else header.rsplit(":", 1)[0]
    return name.lower()


def _too_large(cap: int) -> Response:
    return PlainTextResponse(f"413: request too large (over {cap / 2**20:g} MB)", status_code=413)


def _capped(receive, cap: int):
    """`receive` that stops a body at `cap` bytes: a 413 for the route being read (Starlette answers it)."""
    seen = 0

    async def capped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > cap:
            raise HTTPException(413, f"413: the upload is over {cap / 2**20:g} MB; start `headsmith ui "
                                     "--max-upload-mb N` for larger files")
        return message

    return capped


def _replay(body: bytes):
    """A `receive` that hands the body read by the guard to the route."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def create_app(workspace: Workspace, token: str, hosts: set[str] = frozenset(), settings: Settings = Settings()
               ) -> Guard:
    """The app over `workspace`; `hosts`: names it may be reached by besides the loopback ones."""
    pages = Pages(workspace, token, settings)

    async def home(request: Request) -> Response:
        return RedirectResponse("/datasets", status_code=303)

    async def login(request: Request) -> Response:
        form = await request.form()
        target = local_path(str(form.get("next") or "/"))
        if not same(str(form.get("token", "")), token):
            return login_page(request, status=401, error="wrong token", target=target)
        return signed_in(RedirectResponse(target, status_code=303), token)

    @functools.cache
    def plotly_js() -> bytes:
        from plotly.offline import get_plotlyjs

        return get_plotlyjs().encode()

    async def static_plotly(request: Request) -> Response:  # served here: the app works offline, no CDN
        return Response(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "private, max-age=86400"})

    def streamed(path: str) -> int | None:
        """Routes whose bodies stream to them (sent with the CSRF token in a header), with their caps."""
        if path == "/datasets/import":
            return settings.max_upload_bytes
        if path == "/playground/predict" or (path.startswith("/deployments/") and path.endswith("/ask")):
            return playground.MAX_BODY
        return None

    work = imports.Work(pages)
    scheduler = runs.Scheduler(workspace, settings.parallel_runs)
    app = Starlette(routes=[Route("/", home), Route("/login", login, methods=["POST"]),
                            Route("/static/plotly.js", static_plotly), *imports.routes(pages, work),
                            *datasets.routes(pages, work), *snapshots.routes(pages), *runs.routes(pages, scheduler),
                            *playground.routes(pages), *deployments.routes(pages)])
    return Guard(app, token, LOOPBACK | {h.lower() for h in hosts}, streamed)


def serve(app, host: str, port: int, announce) -> None:
    """Listen on host:port (0: any free port), call `announce(port)` once listening, and serve until stopped."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so; without it a response
    # written in two parts waits out the client's delayed ACK, 40 ms a request
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise HeadsmithError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    announce(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
