"""The `Transport` over an HTTP API provider (Postmark, Resend, SendGrid, Mailgun), on httpx.

One kept-alive connection (HTTP/2 where the endpoint offers it) carries every call. Messages go
in calls sized by the provider's count and byte limits (`mailcli.providers`). What each answer
means, for every provider alike:

- 2xx: the provider's verdict per message (accepted -> `sent` with its id; refused -> `failed`,
  or `deferred` where the provider says it may clear).
- 429, 500, 503, and Resend's 409 for a request still in progress: nothing was taken; the same
  request is sent again after `Retry-After` (or the rate-limit reset, or a backoff), a few times,
  then the messages are `deferred` for the engine's retry policy.
- a token refused (401, 403 by the provider's reading): nothing was taken; the run stops with
  exit 77 once what was sent is recorded.
- 413, or another 4xx refusing a call of several messages: nothing was taken; the call is split
  (413: in halves; else into single messages) so that one bad message fails alone.
- a request that could not be written (connect failure, a write error): `NotSent`, sent again
  on a new connection by the one reconnect policy (`mailcli.sender`).
- a request that was written and got no answer (timeout, the connection dropped, 502/504 from a
  gateway that lost the provider's answer): the provider may have taken it, so every message of
  it is `unknown` and never resent, unless the provider has idempotency keys (Resend): then the
  same request, with the same key, is sent again, which the provider answers without sending
  twice within 24 hours.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import functools
import logging
import math
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx

from mailcli.apiconf import ApiConfig
from mailcli.delivery import (
    WINDOW,
    Delivery,
    DeliveryStatus,
    NotSent,
    Pace,
    Result,
)
from mailcli.envelope import Built, check_envelope
from mailcli.errors import (
    AuthError,
    CertificateError,
    ConfigError,
    ExitCode,
    MailcliError,
    UnavailableError,
)
from mailcli.providers import (
    Answer,
    Item,
    Misconfigured,
    Provider,
    Request,
    Uncarried,
    answerless,
    provider_for,
    refused,
)
from mailcli.transport import tls_context

log = logging.getLogger(__name__)
_http_log = logging.getLogger("mailcli.http")
TokenSource = Callable[[], str]
# Tries of one request that the provider asked to repeat (429, 500, 503), or of an idempotent
# request that got no answer; after that its messages are `deferred` (or `unknown`).
TRIES = 4
BACKOFF_S = (1.0, 2.0, 4.0)
MAX_WAIT_S = 60.0  # the longest a Retry-After is honoured within a run
# Nothing taken, try the same request later: a timeout reading the request (408), too early
# (425), the rate limit (429), an error or a pause of the provider's (500, 503).
RETRY_STATUSES = frozenset((408, 425, 429, 500, 503))
# A gateway's "the provider did not answer": the provider may have taken the request.
GATEWAY_STATUSES = frozenset((502, 504))


def _h2() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def user_agent() -> str:
    """mailcli/VERSION (Resend refuses requests without a User-Agent)."""
    import mailcli

    return f"mailcli/{mailcli.__version__}"


@dataclass
class _Call:
    """Messages that travel in one request: their indexes in the `send` call, and the items."""

    indexes: list[int]
    items: list[Item]
    key: str | None = None  # the Idempotency-Key, the same on every try
    paced: bool = False  # the rate limiter was asked for these messages already


class _Failed(Exception):
    """An HTTP exchange that ended without an answer: the error, and whether the request had
    been wholly written (then the provider may have acted on it)."""

    def __init__(self, error: Exception, *, written: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.written = written


@dataclass
class _Split:
    """A call refused whole before the provider took anything: send these parts instead."""

    parts: list[_Call] = field(default_factory=list)


class ApiTransport:
    """Moves messages over an HTTP API provider; see the module's text for what answers mean."""

    smtputf8 = False  # the providers take ASCII local parts only

    def __init__(
        self,
        config: ApiConfig,
        token: TokenSource,
        *,
        timeout: float = 30.0,
        verify: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.provider: Provider = provider_for(config)
        self.token = token
        self.timeout = config.timeout or timeout
        self.verify = verify
        self.sleep = sleep
        self.clock = clock
        self.connections = 0
        self.requests = 0
        self._client: httpx.Client | None = None
        # An error that ends the run at the next open(): a refused token, an untrusted
        # certificate.
        self._refused: MailcliError | None = None
        self._not_before = 0.0  # a rate-limit reset the provider announced
        self._secret = ""  # the token, to keep it out of any text mailcli shows
        self._answered = False  # the endpoint has answered at least once

    # -- the Transport protocol -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The provider's name: "postmark", "resend", "sendgrid" or "mailgun"."""
        return self.config.provider

    @property
    def endpoint(self) -> str:
        """The provider's base URL."""
        return self.config.url

    @property
    def window(self) -> int:
        """A batch call (Postmark 500, Resend 100), or the SMTP window for one-message APIs."""
        size = self.provider.batch_max if self.provider.batch_max > 1 else WINDOW
        return min(size, self.config.batch_size or size)

    @property
    def is_open(self) -> bool:
        """A client is ready (HTTP connects on the first request)."""
        return self._client is not None

    def open(self) -> None:
        """Make the client; raise the AuthError of a token already refused in this run."""
        if self._refused is not None:
            raise self._refused
        if self._client is not None:
            return
        token = self.token()  # ConfigError when there is none, before any request
        if not token or not all("!" <= c <= "~" for c in token):
            # It goes into a header, where a space, a line break or a non-ASCII character
            # would be refused (or split the header); never echoed.
            raise ConfigError(
                f"the {self.provider.title} API token holds a character an HTTP header cannot "
                "carry (a space, a line break or a non-ASCII character)",
                hint=f"check {self.config.info.token_env}, the keyring entry api:{self.name} "
                "or api.token_command",
            )
        self._secret = token
        url = self.config.url
        headers = {"User-Agent": user_agent(), **self.provider.auth(token)}
        https = url.startswith("https:")
        tls = tls_context(self.verify) if https else False
        # One connection, kept while mailcli builds the next call (httpx closes an idle one
        # after 5 s by default; a provider keeps it about a minute). TCP_NODELAY: a request's
        # headers and body go in separate writes, and Nagle's algorithm would hold the body
        # back until the server's delayed ACK (up to 40 ms a request).
        transport = httpx.HTTPTransport(
            verify=tls,
            http2=https and _h2(),
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=55.0
            ),
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        self._client = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(self.timeout),
            verify=tls,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        """Close the connection; never raises."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def send(
        self,
        messages: Sequence[Built],
        *,
        pace: Pace | None = None,
        idle: Callable[[], object] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> list[Result]:
        """Send messages in calls; one result for each, in order (never raises an outcome)."""
        for message in messages:
            check_envelope(message)  # the same guard as on the wire over SMTP
        results: list[Result | None] = [None] * len(messages)
        items: list[tuple[int, Item]] = []
        for index, message in enumerate(messages):
            try:
                items.append((index, self.provider.item(message)))
            except Uncarried as exc:
                # Never offered to the provider: failed without a code, like an address that
                # needs SMTPUTF8 on a server without it.
                results[index] = Delivery(
                    DeliveryStatus.FAILED,
                    message.message_id,
                    reply=f"{self.provider.title} cannot carry this message: {exc}",
                )
            except Exception as exc:  # a message that cannot be read back: never offered
                log.warning("message %s cannot be mapped: %r", message.message_id, exc)
                results[index] = Delivery(
                    DeliveryStatus.FAILED,
                    message.message_id,
                    reply=f"mailcli could not map this message for {self.provider.title}: {exc!r}",
                )
        calls = deque(self._plan(items))
        while calls:
            call = calls.popleft()
            if self._client is None:
                reason = "the connection is closed"
            elif cancel is not None and cancel():
                reason = "stopped"
            else:
                if pace is not None and not call.paced:
                    for _ in call.items:
                        pace()
                    call.paced = True
                outcome = self._call(call, cancel, idle)
                if isinstance(outcome, _Split):
                    calls.extendleft(reversed(outcome.parts))
                    continue
                for index, result in zip(call.indexes, outcome, strict=True):
                    results[index] = result
                continue
            for index in call.indexes:
                results[index] = NotSent(reason)
            for rest in calls:
                for index in rest.indexes:
                    results[index] = NotSent(reason)
            break
        return [r if r is not None else NotSent("not sent") for r in results]

    # -- calls ------------------------------------------------------------------------------

    def _plan(self, items: Sequence[tuple[int, Item]]) -> list[_Call]:
        """Group messages into calls by the provider's count and byte limits."""
        limit = min(self.provider.batch_max, self.config.batch_size or self.provider.batch_max)
        calls: list[_Call] = []
        current = _Call([], [])
        size = 1  # a batch body is [item,item,...]: each item adds its length and one byte
        for index, item in items:
            alone = not item.batchable
            full = (
                len(current.items) >= limit
                or size + len(item.body) + 1 > self.provider.call_bytes_max
            )
            if current.items and (alone or full or not current.items[-1].batchable):
                calls.append(current)
                current, size = _Call([], []), 1
            current.indexes.append(index)
            current.items.append(item)
            size += len(item.body) + 1
        if current.items:
            calls.append(current)
        return calls

    def _call(
        self,
        call: _Call,
        cancel: Callable[[], bool] | None,
        idle: Callable[[], object] | None = None,
    ) -> list[Result] | _Split:
        """One call, repeated where the provider asks for it; a result for each message."""
        if self.provider.idempotent and call.key is None:
            call.key = str(uuid.uuid4())
        request = self.provider.request(call.items, call.key)
        title = self.provider.title
        tries = 0
        handed = False  # an earlier try was written and got no answer

        def unanswered(reason: str) -> list[Result]:
            return [answerless(i.built, reason) for i in call.items]

        def stopped(reason: str) -> list[Result]:
            # Not written this time; `unknown` all the same if an earlier try may have been.
            if handed:
                return unanswered(f"no answer from {title}, then {reason}")
            return [NotSent(reason) for _ in call.items]

        while True:
            tries += 1
            if not self._wait(self._not_before - self.clock(), cancel):
                return stopped("stopped")
            try:
                answer = self._request(request, idle)
            except _Failed as failure:
                exc = failure.error
                if not failure.written:
                    # Not wholly written: the provider cannot have acted on it.
                    self._broken(f"{type(exc).__name__}: {self._reason(exc)}")
                    untrusted = _certificate_problem(exc)
                    if untrusted is not None:
                        # Not worth a reconnect: the run stops with exit 69, as over SMTP.
                        self._refused = CertificateError(self.endpoint, untrusted)
                    elif not self._answered:
                        # Never reached at all: the run stops with 69 at once, as an SMTP
                        # server that cannot be reached when the run starts.
                        unreachable = UnavailableError(
                            f"cannot reach {title} at {self.endpoint}: {self._reason(exc)}",
                            hint="check the network, a proxy (HTTPS_PROXY) and api.base_url; "
                            "`mailcli test-connection` shows what answers",
                        )
                        unreachable.retry = False
                        self._refused = unreachable
                    return stopped(f"{self.endpoint}: {self._reason(exc)}")
                # Written, and no answer (or none that can be read): the provider may have the
                # messages.
                retriable = isinstance(exc, httpx.TransportError)
                reason = (
                    f"no answer from {title} after the request was sent: {self._reason(exc)}"
                    if retriable
                    else f"{title} answered unreadably: {self._reason(exc)}"
                )
                handed = True
                self._broken(reason)
                if retriable and self.provider.idempotent and tries < TRIES:
                    log.warning("%s; sending it again with the same Idempotency-Key", reason)
                    if self._reopen(cancel) and self._backoff(tries, cancel):
                        continue
                return unanswered(reason)
            try:
                outcome = self._verdict(call, answer, tries, handed)
            except Exception as exc:  # an answer no rule foresaw: it was answered, so unknown
                log.warning("%s answered %d unreadably: %r", title, answer.status, exc)
                return unanswered(f"{title} answered {answer.status} unreadably: {exc!r}")
            if outcome is not None:
                return (
                    [self._redacted(r) for r in outcome] if isinstance(outcome, list) else outcome
                )
            # The provider asked for the same request again later.
            wait = self._retry_after(answer, tries)
            handed = handed or answer.status in GATEWAY_STATUSES
            log.warning(
                "%s answered %d; trying the call again in %.1f s", title, answer.status, wait
            )
            if not self._wait(wait, cancel):
                return stopped("stopped")

    def _verdict(
        self, call: _Call, answer: Answer, tries: int, handed: bool
    ) -> list[Result] | _Split | None:
        """What an answer means for the messages of a call; None: send the same call again."""
        provider, title, status = self.provider, self.provider.title, answer.status
        if 200 <= status < 300:
            self._note_limits(answer)
            try:
                return list(provider.accepted(answer, call.items))
            except Misconfigured as refusal:
                self._refused = ConfigError(
                    f"{title} refused the call ({refusal.code}): {self._redact(refusal.text)}",
                    hint="it is about the account or the sender, not one message: check the "
                    "sender's signature or domain with the provider",
                )
                self._broken(self._refused.message)
                return [NotSent(self._refused.message) for _ in call.items]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                reason = f"{title} answered {status} in a form mailcli cannot read: {exc}"
                return [answerless(i.built, reason) for i in call.items]
        code, text = self._refusal(answer)
        gateway = status in GATEWAY_STATUSES
        again = (
            status in RETRY_STATUSES
            or provider.wait_again(answer)
            or (gateway and provider.idempotent)
        )
        if again and tries < TRIES:
            return None
        if handed or gateway or (status >= 500 and not again):
            # An earlier try may have been taken, or a gateway lost the provider's answer, or
            # the provider said nothing of the messages: they may have been taken.
            reason = f"no verdict from {title}: HTTP {status} {text}"
            return [answerless(i.built, reason) for i in call.items]
        if again or provider.temporary(answer):
            # Nothing was taken, and the provider may take it later.
            return [refused(i.built, code, text, temporary=True) for i in call.items]
        if status == 421:
            # Misdirected: this connection cannot serve it; nothing was taken. A new one.
            self._broken(f"{status} {text}")
            return [NotSent(f"{title} answered 421: {text}") for _ in call.items]
        fatal: MailcliError | None = None
        if provider.token_refused(answer):
            fatal = AuthError(
                f"{title} refused the API token ({status}): {text}",
                hint=f"check {self.config.info.token_env} (or the keyring entry "
                f"api:{self.name}, or api.token_command)",
            )
        elif 300 <= status < 400:
            fatal = ConfigError(
                f"{title} answered {status}, a redirect to {answer.headers.get('location')!r}",
                hint="check api.base_url (mailcli does not follow redirects with the token)",
            )
        elif provider.misconfigured(answer):
            fatal = ConfigError(
                f"{title} refused the call ({status}): {text}",
                hint="it is about the account, the sender or the endpoint, not one message: "
                "check the sender's domain with the provider, api.base_url and api.domain",
            )
        if fatal is not None:
            # Nothing was taken, nobody is marked; the run stops (77 or 78).
            self._refused = fatal
            self._broken(fatal.message)
            return [NotSent(fatal.message) for _ in call.items]
        if len(call.items) > 1 and 400 <= status < 500:
            # Refused whole before anything was taken: find the message at fault.
            log.info(
                "%s refused a call of %d messages (%d); splitting it",
                title,
                len(call.items),
                status,
            )
            return _Split(_parts(call, halves=status == 413))
        return [refused(i.built, code, text) for i in call.items]

    def _request(self, request: Request, idle: Callable[[], object] | None = None) -> Answer:
        """One HTTP exchange; raises `_Failed`, which says whether the request was wholly
        written. With `idle`, the exchange runs in a worker thread while this one calls `idle`
        (the engine builds the next group meanwhile), as SMTP does while the server works."""
        client = self._client
        if client is None:
            raise _Failed(httpx.ConnectError("the connection is closed"), written=False)
        method, path = request.method, request.path
        size = (
            len(request.content)
            if request.content is not None
            else (sum(len(f[1]) for f in (request.files or {}).values()))
        )
        _http_log.debug("%s %s%s (%d bytes)", method, self.endpoint, path, size)
        started = self.clock()
        written = threading.Event()

        def trace(event: str, info: Mapping[str, Any]) -> None:
            # The whole request is out once its body is: from then on the provider may act on
            # it, whatever fails next (HTTP/2 writes frames while it waits for the answer, and
            # an error there is a write error all the same).
            if event.endswith(".send_request_body.complete"):
                written.set()
            self._trace(event, info)

        exchange = functools.partial(
            client.request,
            method,
            path,
            content=request.content,
            data=request.data,
            files=request.files,
            headers=dict(request.headers),
            extensions={"trace": trace},
        )
        try:
            response = exchange() if idle is None else self._while_idle(exchange, idle)
            answer = Answer(response.status_code, dict(response.headers), response.content)
        except Exception as exc:
            raise _Failed(exc, written=written.is_set()) from exc
        self._answered = True
        elapsed = (self.clock() - started) * 1000
        _http_log.debug(
            "%s %s%s: %d in %.0f ms", method, self.endpoint, path, answer.status, elapsed
        )
        return answer

    def _while_idle(
        self, exchange: Callable[[], httpx.Response], idle: Callable[[], object]
    ) -> httpx.Response:
        """Run the exchange in a daemon thread (a stop never waits for it at exit) while this
        thread calls `idle`: prepare() builds one message a call, a group's worth at most."""
        done = threading.Event()
        outcome: list[httpx.Response | BaseException] = []

        def run() -> None:
            try:
                outcome.append(exchange())
            except BaseException as exc:  # handed back to the caller's thread
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="mailcli-http", daemon=True).start()
        for _ in range(self.window):
            if done.is_set():
                break
            idle()
        done.wait()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _trace(self, event: str, info: Mapping[str, Any]) -> None:
        # httpcore reports each new TCP connection (`connections` in --json) and each request
        # whose headers went out (`requests`: an attempt that could not connect is not one).
        if event == "connection.connect_tcp.complete":
            self.connections += 1
        elif event.endswith(".send_request_headers.complete"):
            self.requests += 1

    def _redact(self, text: str) -> str:
        """The text with the token (and its base64 forms, as in Basic auth) taken out."""
        if not self._secret:
            return text
        for secret in (
            self._secret,
            base64.b64encode(self._secret.encode()).decode(),
            base64.b64encode(f"api:{self._secret}".encode()).decode(),
        ):
            text = text.replace(secret, "<redacted>")
        return text

    def _redacted(self, result: Result) -> Result:
        if (
            isinstance(result, Delivery)
            and self._secret
            and self._redact(result.reply) != result.reply
        ):
            return dataclasses.replace(result, reply=self._redact(result.reply))
        return result

    def _refusal(self, answer: Answer) -> tuple[int, str]:
        """The provider's code and text for a refusal, the token taken out (a provider may
        quote what it was given)."""
        code, text = self.provider.refusal(answer)
        return code, self._redact(text)

    def _reason(self, exc: Exception) -> str:
        return self._redact(_reason(exc))

    def _broken(self, reason: str) -> None:
        log.info("%s: closing the connection: %s", self.endpoint, reason)
        self.close()

    def _reopen(self, cancel: Callable[[], bool] | None) -> bool:
        try:
            self.open()
        except MailcliError:
            return False
        return not (cancel is not None and cancel())

    # -- waiting ----------------------------------------------------------------------------

    def _retry_after(self, answer: Answer, tries: int) -> float:
        """Retry-After, else the rate-limit reset, else a backoff; at most MAX_WAIT_S."""
        hint = retry_after(answer.headers, now=time.time())
        if hint is None:
            hint = BACKOFF_S[min(tries, len(BACKOFF_S)) - 1]
        return min(max(hint, 0.0), MAX_WAIT_S)

    def _backoff(self, tries: int, cancel: Callable[[], bool] | None) -> bool:
        return self._wait(BACKOFF_S[min(tries, len(BACKOFF_S)) - 1], cancel)

    def _note_limits(self, answer: Answer) -> None:
        """The provider said no request is left before a reset: wait for it before the next."""
        headers = answer.headers
        remaining = headers.get("ratelimit-remaining", headers.get("x-ratelimit-remaining"))
        if remaining is not None and remaining.strip() == "0":
            wait = retry_after(headers, now=time.time())
            if wait is not None:
                self._not_before = self.clock() + min(wait, MAX_WAIT_S)

    def _wait(self, seconds: float, cancel: Callable[[], bool] | None) -> bool:
        """Sleep in short steps, asking `cancel`; False when it said stop."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if cancel is not None and cancel():
                return False
            self.sleep(min(left, 0.25))
        return True


def _parts(call: _Call, halves: bool) -> list[_Call]:
    """A refused call's messages in smaller calls (paced already: they never left)."""
    if halves:
        middle = len(call.items) // 2
        return [
            _Call(call.indexes[:middle], call.items[:middle], paced=True),
            _Call(call.indexes[middle:], call.items[middle:], paced=True),
        ]
    return [
        _Call([i], [item], paced=True) for i, item in zip(call.indexes, call.items, strict=True)
    ]


def _certificate_problem(exc: BaseException) -> str | None:
    """Why the server's certificate was not trusted, when that is what failed."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def retry_after(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait, from Retry-After (seconds or an HTTP date) or a rate-limit reset
    (`ratelimit-reset`: seconds; `x-ratelimit-reset`: epoch seconds, or seconds when small)."""
    lower = {k.lower(): v for k, v in headers.items()}
    value = lower.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                when = email.utils.parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                return max(0.0, when.timestamp() - now)
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        value = lower.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            continue
        # An epoch time is far larger than any wait in seconds.
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    return None


# -- test-connection ------------------------------------------------------------------------


@dataclass
class ApiDiagnosis:
    """What `test-connection` found out about an API token; `to_json()` is its `--json`."""

    config: ApiConfig
    account: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    tls: dict[str, Any] | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    exit_code: int = ExitCode.OK

    @property
    def ok(self) -> bool:
        """The token works."""
        return self.exit_code == ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (the SMTP report's keys, with the API's meaning)."""
        url = httpx.URL(self.config.url)
        return {
            "ok": self.ok,
            "transport": self.config.provider,
            "host": url.host,
            "port": url.port or (443 if url.scheme == "https" else 80),
            "security": "tls" if url.scheme == "https" else "none",
            "base_url": self.config.url,
            "banner": None,
            "capabilities": [],
            "tls": self.tls,
            "auth": {
                "ok": self.ok if self.status is not None else None,
                "status": self.status,
                "account": self.account.get("name"),
            },
            "account": self.account,
            "limits": self.account.get("limits"),
            "timings_ms": self.timings_ms,
            "error": self.error,
            "exit_code": int(self.exit_code),
        }


def diagnose_api(
    config: ApiConfig, token: TokenSource, *, timeout: float = 30.0, verify: bool = True
) -> ApiDiagnosis:
    """Check a token with the provider's read-only calls; sends no message."""
    report = ApiDiagnosis(config)
    transport = ApiTransport(config, token, timeout=timeout, verify=verify)
    provider = transport.provider
    try:
        transport.open()
    except MailcliError as exc:
        report.error, report.exit_code = exc.message, int(exc.exit_code)
        return report
    assert transport._client is not None
    answers: list[Answer] = []
    try:
        for index, path in enumerate(provider.account_requests()):
            started = time.perf_counter()
            response = transport._client.get(path)
            report.timings_ms[path] = round((time.perf_counter() - started) * 1000, 1)
            answer = Answer(response.status_code, dict(response.headers), response.content)
            if index == 0:
                report.status = answer.status
                report.tls = _tls(response)
                problem = _diagnosis_problem(provider, answer)
                if problem is not None:
                    report.error, report.exit_code = transport._redact(problem[0]), problem[1]
                    return report
            answers.append(answer)
        report.account = provider.account(answers)
        if report.account.get("can_send") is False:
            report.error = f"{provider.title} accepted the API token, but it may not send mail"
            report.exit_code = ExitCode.NOPERM
    except httpx.HTTPError as exc:
        untrusted = _certificate_problem(exc)
        report.error = (
            CertificateError(config.url, untrusted).message
            if untrusted is not None
            else f"{config.url}: {transport._reason(exc)}"
        )
        report.exit_code = ExitCode.UNAVAILABLE
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        report.error = transport._redact(
            f"{provider.title} answered in a form mailcli cannot read: {exc!r}"
        )
        report.exit_code = ExitCode.UNAVAILABLE
    finally:
        transport.close()
    return report


def _diagnosis_problem(provider: Provider, answer: Answer) -> tuple[str, int] | None:
    """The error and exit code that the first account answer means (None: the token works)."""
    status, title = answer.status, provider.title
    if status < 300 or _send_only(provider, answer):
        return None
    _, text = provider.refusal(answer)
    if 300 <= status < 400:
        where = answer.headers.get("location")
        return f"{title} answered {status}, a redirect to {where!r}: check api.base_url", 78
    if provider.token_refused(answer):
        return f"{title} refused the API token ({status}): {text}", ExitCode.NOPERM
    if status in (404, 405):
        return f"{title} answered {status}: {text}: check api.base_url and api.domain", 78
    return f"{title} answered {status}: {text}", ExitCode.UNAVAILABLE


def _send_only(provider: Provider, answer: Answer) -> bool:
    """Resend's sending-only keys cannot read the account: the token works all the same."""
    data = answer.json()
    return (
        provider.name == "resend"
        and answer.status == 401
        and isinstance(data, dict)
        and data.get("name") == "restricted_api_key"
    )


def _tls(response: httpx.Response) -> dict[str, Any] | None:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "bits": cipher[2] if cipher else None,
        "http_version": response.http_version,
    }
