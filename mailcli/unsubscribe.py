"""One-click unsubscribe (RFC 8058): signed per-recipient URLs, and the endpoint that honours them.

A campaign with `unsubscribe: {endpoint: URL, secret_env: VAR}` gives every message its own URL,
`ENDPOINT?u=TOKEN`. The token carries the campaign and the recipient's normalised address
(`payload`), and an HMAC-SHA256 signature over them with a secret that only the sender and the
endpoint know (`payload.signature`, each part URL-safe base64 without padding). The endpoint
needs no database of tokens: a valid signature proves the link came from a message we sent, and
a token that was altered, cut short or signed with another secret changes nothing.

The endpoint is a plain WSGI application (`make_app`; `app`, configured from the environment,
for `gunicorn 'mailcli.unsubscribe:app'`; `serve` for development and small setups). A POST with
a valid token suppresses the address (`Reason.UNSUBSCRIBED`); a GET only shows a confirmation
page whose button POSTs, because mail scanners and link previewers follow GET links and must
never unsubscribe anyone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeAlias

from mailcli.addresses import address_key
from mailcli.campaign import DEFAULT_SECRET_ENV, LOOPBACK_HOSTS, Campaign
from mailcli.errors import ConfigError, MailcliError
from mailcli.secrets import KeyringUnavailable, keyring_read
from mailcli.suppression import (
    Location,
    Reason,
    SuppressionList,
    default_location,
    for_campaign,
)

if TYPE_CHECKING:
    from socketserver import TCPServer
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "DEFAULT_SECRET_ENV",
    "MIN_SECRET_BYTES",
    "InvalidToken",
    "Signer",
    "Subscriber",
    "UnsubscribeApp",
    "app",
    "campaign_app",
    "campaign_signer",
    "is_one_click",
    "keyring_entry",
    "listen_url",
    "make_app",
    "make_server",
    "redact",
    "resolve_secret",
    "secret_bytes",
    "serve",
]

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
# `MAILCLI_UNSUBSCRIBE_SECRET_ENV=VAR` tells the module-level `app` which variable holds the
# secret (as `secret_env:` does for a campaign).
SECRET_ENV_ENV = "MAILCLI_UNSUBSCRIBE_SECRET_ENV"
KEYRING_PREFIX = "unsubscribe:"

TOKEN_VERSION = "1"
# Mixed into every signature, so that a secret also used for something else (it should not be)
# never yields a valid unsubscribe token there, nor that thing's signatures one here.
_CONTEXT = b"mailcli unsubscribe\0"
_B64 = re.compile(r"[A-Za-z0-9_-]*")
MAX_TOKEN = 2048  # characters; a real token is about 100

# The POST of RFC 8058 is `List-Unsubscribe=One-Click` (about 26 bytes); the confirmation
# page's form sends the same. Anything much larger is not an unsubscribe.
MAX_BODY = 4096
RETRY_AFTER_S = 120


class InvalidToken(ValueError):
    """A token that is malformed (`forged` False: HTTP 400) or whose signature does not match
    (`forged` True: HTTP 403)."""

    def __init__(self, reason: str, *, forged: bool) -> None:
        super().__init__(reason)
        self.forged = forged


@dataclass(frozen=True, slots=True)
class Subscriber:
    """Who a valid token speaks for."""

    campaign: str
    email: str  # the normalised address (`address_key`)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """URL-safe base64 without padding, accepted only in its one canonical spelling."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidToken("not base64", forged=False)
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("not base64", forged=False) from None
    if _b64(data) != text:  # stray bits in the last character: not a token we made
        raise InvalidToken("not canonical base64", forged=False)
    return data


def secret_bytes(secret: str | bytes, where: str = "the unsubscribe secret") -> bytes:
    """The secret as the key of the HMAC; ConfigError (78) when it is too short to be safe."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        # The message says where the secret is, never what it is.
        raise ConfigError(
            f"{where} is shorter than {MIN_SECRET_BYTES} bytes: too easy to guess",
            hint=f"make one with: {MAKE_SECRET}",
        )
    return key


class Signer:
    """Makes and checks the unsubscribe tokens of one secret."""

    __slots__ = ("_key",)

    def __init__(self, secret: str | bytes) -> None:
        self._key = secret_bytes(secret)

    def __repr__(self) -> str:
        return "Signer(<secret hidden>)"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()

    def token(self, campaign: str, email: str) -> str:
        """The token for one recipient of a campaign: `payload.signature`, URL-safe."""
        key = address_key(email.strip())
        if "\n" in campaign or "\n" in key or "\r" in key or not campaign or not key:
            raise ValueError("an unsubscribe token needs a one-line campaign name and address")
        payload = f"{TOKEN_VERSION}\n{campaign}\n{key}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def url(self, endpoint: str, campaign: str, email: str) -> str:
        """The recipient's own unsubscribe URL: `ENDPOINT?u=TOKEN`."""
        return f"{endpoint}?u={self.token(campaign, email)}"

    def verify(self, token: str) -> Subscriber:
        """Who a token speaks for; InvalidToken when it is malformed or not signed by us.

        The signature is compared in constant time, and before the payload is read: nothing
        of an unsigned payload is trusted, or even parsed.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
            raise InvalidToken("no token, or one far too long", forged=False)
        encoded, dot, signature = token.partition(".")
        if not dot or "." in signature:
            raise InvalidToken("not of the form payload.signature", forged=False)
        payload, mac = _unb64(encoded), _unb64(signature)
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidToken("the signature does not match", forged=True)
        try:
            version, campaign, email = payload.decode("utf-8").split("\n")
        except (UnicodeDecodeError, ValueError):
            raise InvalidToken("signed, but not a payload of this version", forged=False) from None
        if version != TOKEN_VERSION or not campaign or not email:
            raise InvalidToken(f"unknown token version {version!r}", forged=False)
        return Subscriber(campaign, email)


def is_one_click(url: str) -> bool:
    """True for a URL that can take RFC 8058's one-click POST: https, or http on a loopback
    host (127.0.0.1, localhost, ::1), which is accepted for development and tests."""
    if url.startswith("https://"):  # the common case, once per message: no parsing
        return len(url) > 8 and url[8] not in "/?#"
    if not url.startswith("http://"):
        return False
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    return host in LOOPBACK_HOSTS


# -- the secret ------------------------------------------------------------------------------


def keyring_entry(env_name: str) -> str:
    """The keyring entry (service `mailcli`) that holds the secret named by `env_name`."""
    return KEYRING_PREFIX + env_name


def resolve_secret(env_name: str = DEFAULT_SECRET_ENV, env: Mapping[str, str] | None = None) -> str:
    """The signing secret: the variable `env_name`, else the keyring entry `unsubscribe:NAME`,
    else a ConfigError (78) that names both. The secret itself never appears in any message."""
    environ = os.environ if env is None else env
    value = environ.get(env_name, "").strip()
    if value:
        secret_bytes(value, f"${env_name}")
        return value
    entry = keyring_entry(env_name)
    note = ""
    try:
        stored = keyring_read(entry)
    except KeyringUnavailable as exc:
        note = f" ({exc.message})"
        stored = None
    if stored and stored.strip():
        secret_bytes(stored.strip(), f"the keyring entry {entry!r}")
        return stored.strip()
    raise ConfigError(
        f"no unsubscribe secret: ${env_name} is not set and the system keyring has no entry "
        f"{entry!r} (service mailcli){note}",
        hint=f"make one with: {MAKE_SECRET}; then set {env_name} to it, or store it with "
        f"`keyring set mailcli {entry}`; the sender and the endpoint need the same secret",
    )


def campaign_signer(campaign: Campaign) -> Signer | None:
    """The signer of a campaign with `unsubscribe.endpoint` (its secret resolved now, once per
    run), or None for a campaign without one."""
    if campaign.unsubscribe_endpoint is None:
        return None
    return Signer(resolve_secret(campaign.unsubscribe_secret_env or DEFAULT_SECRET_ENV))


# -- the endpoint ------------------------------------------------------------------------------

StartResponse: TypeAlias = Callable[..., Any]
WsgiApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Robots-Tag", "noindex, nofollow"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 34rem; margin: 4rem auto;
  padding: 0 1rem; line-height: 1.5; color: #222; }}
button {{ font: inherit; padding: .5rem 1.5rem; cursor: pointer; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}</body>
</html>
"""

NOT_VALID = (
    "This link is not valid",
    "<p>The unsubscribe link is incomplete or has been changed. Please use the link in the "
    "email exactly as it is, or reply to the email and ask to be removed.</p>\n",
)


def _respond(
    start_response: StartResponse,
    status: HTTPStatus,
    title: str,
    body: str,
    *,
    head: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    """A short HTML page with the security headers; `title` is escaped, `body` must be."""
    page = _PAGE.format(title=html.escape(title), body=body).encode("utf-8")
    start_response(
        f"{status.value} {status.phrase}",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(page))),
            *SECURITY_HEADERS,
            *extra,
        ],
    )
    return [] if head else [page]


class UnsubscribeApp:
    """The WSGI application of the one-click endpoint (stdlib only, thread-safe)."""

    def __init__(self, secret: str | bytes, suppression: Location | SuppressionList) -> None:
        self.signer = Signer(secret)
        self._location = suppression if isinstance(suppression, Location) else None
        self._list: SuppressionList | None = (
            None if isinstance(suppression, Location) else suppression
        )
        self.where = suppression.target if isinstance(suppression, Location) else suppression.where
        # One writer at a time: a SQLite connection (or a psycopg one) shared by the threads.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"UnsubscribeApp(suppression={self.where!r})"

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        head = method == "HEAD"
        if method not in ("GET", "HEAD", "POST"):
            return _respond(
                start_response,
                HTTPStatus.METHOD_NOT_ALLOWED,
                "Method not allowed",
                "<p>Open the unsubscribe link from the email.</p>\n",
                extra=[("Allow", "GET, HEAD, POST")],
            )
        if method == "POST":
            refused = self._read_body(environ)
            if refused is HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                return _respond(
                    start_response, refused, "Request too large", "<p>Nothing was changed.</p>\n"
                )
            if refused is not None:
                return _respond(start_response, refused, *NOT_VALID)
        query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        tokens = query.get("u", [])
        try:
            if len(tokens) != 1:
                raise InvalidToken("no token, or more than one", forged=False)
            who = self.signer.verify(tokens[0])
        except InvalidToken as exc:
            status = HTTPStatus.FORBIDDEN if exc.forged else HTTPStatus.BAD_REQUEST
            return _respond(start_response, status, *NOT_VALID, head=head)
        if method == "POST":
            return self._unsubscribe(who, start_response)
        return self._confirm(who, tokens[0], start_response, head=head)

    @staticmethod
    def _read_body(environ: dict[str, Any]) -> HTTPStatus | None:
        """Read (and drop) the request body: at most CONTENT_LENGTH bytes, and never more than
        MAX_BODY. Any POST with a valid token unsubscribes, whatever its body: RFC 8058 lets the
        sender use multipart/form-data or a urlencoded form, and the token is the proof."""
        text = str(environ.get("CONTENT_LENGTH") or "0").strip()
        if not (text.isascii() and text.isdigit()):  # "²" is a digit to str.isdigit
            return HTTPStatus.BAD_REQUEST
        length = int(text)
        if length > MAX_BODY:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
        stream = environ.get("wsgi.input")
        if length and stream is not None:
            stream.read(length)
        return None

    def _confirm(
        self, who: Subscriber, token: str, start_response: StartResponse, *, head: bool
    ) -> list[bytes]:
        # The form posts to this same URL ('?u=' relative to the page, so a path prefix added
        # by a reverse proxy is kept); the token is one of ours, but escaped all the same.
        body = (
            f"<p>Stop all mailings to <strong>{html.escape(who.email)}</strong>?</p>\n"
            f'<form method="post" action="?u={html.escape(token, quote=True)}">\n'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">\n'
            '<button type="submit">Unsubscribe</button>\n'
            "</form>\n"
        )
        return _respond(start_response, HTTPStatus.OK, "Unsubscribe", body, head=head)

    def _unsubscribe(self, who: Subscriber, start_response: StartResponse) -> list[bytes]:
        try:
            added = self._suppress(who)
        except Exception as exc:  # whatever the list's trouble, the sender may try again later
            if isinstance(exc, MailcliError):
                log.error("could not record an unsubscribe (campaign %s): %s", who.campaign, exc)
            else:
                log.exception("could not record an unsubscribe (campaign %s)", who.campaign)
            return _respond(
                start_response,
                HTTPStatus.SERVICE_UNAVAILABLE,
                "Please try again later",
                "<p>Your request could not be recorded just now. Please try again in a few "
                "minutes.</p>\n",
                extra=[("Retry-After", str(RETRY_AFTER_S))],
            )
        if added:
            log.info("unsubscribed %s (campaign %s)", who.email, who.campaign)
        body = (
            f"<p><strong>{html.escape(who.email)}</strong> will get no more mailings from us.</p>\n"
        )
        return _respond(start_response, HTTPStatus.OK, "You are unsubscribed", body)

    def _suppress(self, who: Subscriber) -> bool:
        with self._lock:
            if self._list is None:
                assert self._location is not None
                self._list = self._location.open()
            try:
                return self._list.add(who.email, Reason.UNSUBSCRIBED, campaign=who.campaign)
            except Exception:
                if self._location is not None:  # opened here: open it afresh next time
                    self._close_list()
                raise

    def _close_list(self) -> None:
        found, self._list = self._list, None
        if found is not None:
            try:
                found.close()
            except Exception:  # closing a broken connection may fail too; it is gone anyway
                log.debug("closing the suppression list failed", exc_info=True)

    def close(self) -> None:
        """Close the suppression list, if this app opened it."""
        with self._lock:
            if self._location is not None:
                self._close_list()


def make_app(secret: str | bytes, suppression: Location | SuppressionList) -> UnsubscribeApp:
    """The endpoint as a WSGI application: `secret` signs the tokens (at least 16 bytes), and
    unsubscribes go to `suppression` (a Location is opened at the first unsubscribe)."""
    return UnsubscribeApp(secret, suppression)


def campaign_app(campaign: Campaign | None, *, secret_env: str | None = None) -> UnsubscribeApp:
    """The endpoint for a campaign (its `secret_env` and its suppression list), or without one
    for the defaults ($MAILCLI_UNSUBSCRIBE_SECRET, $MAILCLI_SUPPRESSION or the user's list).
    `secret_env` names another variable for the secret, campaign or not."""
    if campaign is None:
        return make_app(
            resolve_secret(secret_env or DEFAULT_SECRET_ENV), Location(default_location())
        )
    if campaign.unsubscribe_endpoint is None:
        raise ConfigError(
            "the campaign has no one-click endpoint to serve",
            path=campaign.path,
            hint="give it `unsubscribe: {endpoint: https://..., secret_env: VAR}`",
        )
    location = for_campaign(campaign)
    if location is None:
        raise ConfigError(
            "the campaign has `suppression: false`: there is no list to unsubscribe into",
            path=campaign.path,
        )
    name = secret_env or campaign.unsubscribe_secret_env or DEFAULT_SECRET_ENV
    return make_app(resolve_secret(name), location)


class _FromEnvironment:
    """The module-level `app`: configured from the environment at its first request, so that
    importing this module needs no secret (gunicorn imports it in its master process)."""

    def __init__(self) -> None:
        self._app: UnsubscribeApp | None = None
        self._lock = threading.Lock()

    def configured(self) -> UnsubscribeApp:
        """The app, configured now if it was not yet (ConfigError when the secret is missing)."""
        with self._lock:
            if self._app is None:
                name = os.environ.get(SECRET_ENV_ENV, "").strip() or DEFAULT_SECRET_ENV
                self._app = make_app(resolve_secret(name), Location(default_location()))
            return self._app

    def reset(self) -> None:
        """Forget the configuration: the next request reads the environment again."""
        with self._lock:
            if self._app is not None:
                self._app.close()
            self._app = None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            target = self.configured()
        except MailcliError as exc:
            log.error("the unsubscribe endpoint is not configured: %s", exc)
            return _respond(
                start_response,
                HTTPStatus.SERVICE_UNAVAILABLE,
                "Please try again later",
                "<p>Unsubscribing is not available just now. Please try again later.</p>\n",
                extra=[("Retry-After", str(RETRY_AFTER_S))],
            )
        return target(environ, start_response)


app = _FromEnvironment()


# -- a small server ------------------------------------------------------------------------------

# The signature part of a token in a request line: left out of the log, so that a log that
# leaks gives nobody working links.
_SIGNATURE = re.compile(r"(\bu=[A-Za-z0-9_-]*)(?:\.|%2[Ee])[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """A request line without the signatures of the tokens in it."""
    return _SIGNATURE.sub(r"\1.[signature]", text)


def make_server(application: WsgiApp, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A threading wsgiref server for `application`, bound but not yet serving (port 0: any
    free one; see `server.server_port`)."""
    import socket
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Handler(WSGIRequestHandler):
        timeout = 30  # seconds a client may take to send its request: a slow one ties a thread

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.client_address[0], redact(format % args))

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.exception("error while serving %s", client_address[0])

    server = Server((host, port), Handler)
    server.set_app(application)
    return server


def serve(application: WsgiApp, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve `application` until interrupted (development and small setups; in production,
    gunicorn behind a TLS-terminating proxy)."""
    server = make_server(application, host, port)
    log.info("listening on %s", listen_url(server))
    with server:
        server.serve_forever()


def listen_url(server: TCPServer) -> str:
    """`http://HOST:PORT/` of a bound server."""
    host, port = server.socket.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    return f"http://{shown}:{port}/"
