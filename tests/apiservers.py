"""Local HTTP servers that speak the HTTP APIs of Postmark, Resend, SendGrid and Mailgun.

The providers cannot be reached from the test machines, so each server here implements the
requests and answers its provider documents, on a free loopback port, records every request and
every message it takes, and injects faults on the server side (429 with Retry-After, 5xx,
per-message refusals, a hang after taking the messages, a refused token). The shapes follow:

- Postmark: https://postmarkapp.com/developer/api/email-api (POST /email, /email/batch: an array
  of results, HTTP 200 even when single messages fail, ErrorCode per message),
  https://postmarkapp.com/developer/api/overview#error-codes (10 bad token -> 401, 300 invalid
  request, 406 inactive recipient, 410 too many batch messages -> 422),
  https://postmarkapp.com/developer/api/server-api (GET /server).
- Resend: https://resend.com/docs/api-reference/emails/send-batch-emails (POST /emails/batch, at
  most 100, no attachments, `x-batch-validation: strict|permissive`),
  https://resend.com/docs/api-reference/emails/send-email (POST /emails),
  https://resend.com/docs/dashboard/emails/idempotency-keys (`Idempotency-Key`: the first answer
  is replayed for 24 hours; another body under the same key is 409 invalid_idempotent_request),
  https://resend.com/docs/api-reference/errors ({statusCode, message, name}),
  https://resend.com/docs/api-reference/rate-limit (ratelimit-* headers),
  https://resend.com/docs/api-reference/domains/list-domains (GET /domains; a sending-only key
  gets 401 restricted_api_key).
- SendGrid: https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send (POST
  /v3/mail/send -> 202 with X-Message-Id; {errors: [{message, field, help}]}; text/plain before
  text/html), https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/
  rate-limits (X-RateLimit-* headers), /users-api (GET /v3/user/account, /v3/user/credits).
- Mailgun: https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages/
  post-v3--domain-name--messages-mime (multipart/form-data: `to`, `message`, o:tag, v:*;
  {id, message: "Queued. Thank you."}), /api-reference/authentication (Basic api:KEY),
  /api-reference/openapi-final/tag/Domains/ (GET /v4/domains/{name}), custom monthly limit
  (GET /v5/accounts/limit/custom/monthly).
"""

from __future__ import annotations

import base64
import email.policy
import json
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    """One request as the server got it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Taken:
    """One message the provider took: its id, its recipients, and what came with it."""

    id: str
    recipients: list[str]
    message: Any  # the JSON object, or the MIME bytes (Mailgun)
    form: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, **headers: str) -> Reply:
        return cls(
            status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers}
        )


@dataclass
class Fault:
    """A fault for the next sending request(s): a reply instead of taking the messages, or
    `hang` (take them, then sit without answering until the client gives up)."""

    reply: Reply | None = None
    hang_s: float = 0.0
    times: int = 1


class ProviderServer:
    """The common part: a threaded HTTP/1.1 server (keep-alive) on 127.0.0.1, a record of
    requests and taken messages, and a queue of faults for the sending endpoints."""

    title = ""

    def __init__(self, token: str = "test-token-0123456789") -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self.taken: list[Taken] = []
        self.faults: deque[Fault] = deque()
        # address -> (code, text): refuse any message to that address.
        self.refuse: dict[str, tuple[int, str]] = {}
        self.connections = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.on_request: Callable[[Recorded], None] | None = None
        self.errors: list[str] = []
        self.tls: ssl.SSLContext | None = None

    # -- running -----------------------------------------------------------------------------

    def start(self, tls: ssl.SSLContext | None = None) -> ProviderServer:
        """Serve on a free loopback port; over HTTPS with `tls` (a server context)."""
        owner = self
        self.tls = tls

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def setup(self) -> None:
                super().setup()
                with owner.lock:
                    owner.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with owner.lock:
                    owner.requests.append(record)
                if owner.on_request is not None:
                    owner.on_request(record)
                try:
                    reply, hang = owner.dispatch(record)
                except Exception as exc:  # a bug in this server: a 500, and the test fails
                    owner.errors.append(f"{type(exc).__name__}: {exc}")
                    reply, hang = Reply(500, b"test server error"), 0.0
                if hang:
                    time.sleep(hang)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            do_GET = do_POST = _serve

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # A client that refused the certificate, or hung up: not the server's fault.
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            # The handshake runs in the handler's thread, at its first read.
            self.server.socket = tls.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        scheme = "https://localhost" if self.tls is not None else "http://127.0.0.1"
        return f"{scheme}:{self.server.server_address[1]}"

    # -- what tests look at ------------------------------------------------------------------

    def fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def recipients(self) -> list[str]:
        """Every address of every message taken, in order (duplicates show as such)."""
        return [r.lower() for t in self.taken for r in t.recipients]

    def sends(self) -> list[Recorded]:
        """The sending requests (not the account look-ups)."""
        return [r for r in self.requests if r.method == "POST"]

    # -- serving -----------------------------------------------------------------------------

    def dispatch(self, record: Recorded) -> tuple[Reply, float]:
        if not self.authorized(record.headers):
            return self.bad_token(), 0.0
        if record.method == "GET":
            return self.get(record.path), 0.0
        fault = self._next_fault()
        if fault is not None and fault.reply is not None:
            return fault.reply, 0.0
        reply = self.post(record)
        return reply, fault.hang_s if fault is not None else 0.0

    def _next_fault(self) -> Fault | None:
        with self.lock:
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self.faults.popleft()
            return fault

    def take(
        self, recipients: list[str], message: Any, form: dict[str, list[str]] | None = None
    ) -> str:
        taken = Taken(str(uuid.uuid4()), recipients, message, form or {})
        with self.lock:
            self.taken.append(taken)
        return taken.id

    def refusal_for(self, addresses: list[str]) -> tuple[int, str] | None:
        for address in addresses:
            if address.lower() in self.refuse:
                return self.refuse[address.lower()]
        return None

    def authorized(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def bad_token(self) -> Reply:
        raise NotImplementedError

    def get(self, path: str) -> Reply:
        raise NotImplementedError

    def post(self, record: Recorded) -> Reply:
        raise NotImplementedError


def _addresses(value: str | list[str] | None) -> list[str]:
    """The addresses of "Name <a@b>, c@d" or a list of such strings."""
    from email.utils import getaddresses

    if not value:
        return []
    items = value if isinstance(value, list) else [value]
    return [addr for _, addr in getaddresses(items) if addr]


class PostmarkServer(ProviderServer):
    title = "Postmark"

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("x-postmark-server-token") == self.token

    def bad_token(self) -> Reply:
        return Reply.json(
            401, {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."}
        )

    def get(self, path: str) -> Reply:
        if path == "/server":
            return Reply.json(
                200,
                {"ID": 1234, "Name": "Acme Broadcasts", "DeliveryType": "Live", "Color": "blue"},
            )
        return Reply.json(404, {"ErrorCode": 404, "Message": "Not found"})

    def post(self, record: Recorded) -> Reply:
        try:
            data = record.json()
        except ValueError:
            return Reply.json(422, {"ErrorCode": 402, "Message": "Invalid JSON"})
        if record.path == "/email":
            result = self._one(data)
            if result["ErrorCode"]:
                return Reply.json(422, {k: result[k] for k in ("ErrorCode", "Message")})
            return Reply.json(200, result)
        if record.path == "/email/batch":
            if not isinstance(data, list):
                return Reply.json(422, {"ErrorCode": 403, "Message": "Incompatible JSON"})
            if len(data) > 500:
                return Reply.json(422, {"ErrorCode": 410, "Message": "Too many batch messages."})
            return Reply.json(200, [self._one(m) for m in data])
        return Reply.json(404, {"ErrorCode": 404, "Message": "Not found"})

    def _one(self, message: dict[str, Any]) -> dict[str, Any]:
        to = _addresses(message.get("To"))
        everyone = to + _addresses(message.get("Cc")) + _addresses(message.get("Bcc"))
        if not message.get("From") or not to:
            return {"ErrorCode": 300, "Message": "Invalid email request: From and To are required"}
        if not message.get("TextBody") and not message.get("HtmlBody"):
            return {
                "ErrorCode": 300,
                "Message": "Provide either email TextBody or HtmlBody or both.",
            }
        if len(everyone) > 50:
            return {"ErrorCode": 300, "Message": "Maximum of 50 recipients."}
        refusal = self.refusal_for(everyone)
        if refusal is not None:
            return {"ErrorCode": refusal[0], "Message": refusal[1]}
        message_id = self.take(everyone, message)
        return {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": message_id,
            "SubmittedAt": "2026-12-02T10:00:00.0000000-05:00",
            "To": message.get("To"),
        }


class ResendServer(ProviderServer):
    title = "Resend"

    def __init__(self, token: str = "re_test_0123456789") -> None:
        super().__init__(token)
        self.seen_keys: dict[str, tuple[bytes, Reply]] = {}
        self.sending_only = False  # the key may send but not read the account

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}"

    def bad_token(self) -> Reply:
        return Reply.json(
            401, {"statusCode": 401, "message": "API key is invalid", "name": "validation_error"}
        )

    def limits(self) -> dict[str, str]:
        return {"ratelimit-limit": "10", "ratelimit-remaining": "9", "ratelimit-reset": "1"}

    def get(self, path: str) -> Reply:
        if path == "/domains":
            if self.sending_only:
                return Reply.json(
                    401,
                    {
                        "statusCode": 401,
                        "message": "This API key is restricted to only send emails.",
                        "name": "restricted_api_key",
                    },
                )
            return Reply.json(
                200,
                {
                    "object": "list",
                    "has_more": False,
                    "data": [
                        {
                            "id": "d1",
                            "name": "acme.example",
                            "status": "verified",
                            "region": "us-east-1",
                        }
                    ],
                },
            )
        return Reply.json(404, {"statusCode": 404, "message": "Not found", "name": "not_found"})

    def dispatch(self, record: Recorded) -> tuple[Reply, float]:
        key = record.headers.get("idempotency-key")
        if key is not None and record.method == "POST" and self.authorized(record.headers):
            with self.lock:
                seen = self.seen_keys.get(key)
            if seen is not None:
                body, reply = seen
                if body != record.body:
                    return Reply.json(
                        409,
                        {
                            "statusCode": 409,
                            "message": "This idempotency key has been used with this HTTP method "
                            "and endpoint within the last 24 hours, but the request body was "
                            "modified and doesn't match the original request.",
                            "name": "invalid_idempotent_request",
                        },
                    ), 0.0
                return reply, 0.0  # replayed: nothing is sent again
        reply, hang = super().dispatch(record)
        if key is not None and 200 <= reply.status < 300:
            with self.lock:
                self.seen_keys[key] = (record.body, reply)
        return reply, hang

    def post(self, record: Recorded) -> Reply:
        error = lambda status, name, message: Reply.json(  # noqa: E731
            status, {"statusCode": status, "message": message, "name": name}, **self.limits()
        )
        try:
            data = record.json()
        except ValueError:
            return error(422, "validation_error", "Invalid JSON")
        if record.path == "/emails":
            problem = self._problem(data)
            if problem:
                return error(422, "validation_error", problem)
            return Reply.json(200, {"id": self._take(data)}, **self.limits())
        if record.path == "/emails/batch":
            if not isinstance(data, list) or len(data) > 100:
                return error(422, "validation_error", "The batch must hold 1 to 100 emails.")
            if any("attachments" in m for m in data):
                return error(
                    422, "validation_error", "The `attachments` field is not supported yet."
                )
            permissive = record.headers.get("x-batch-validation") == "permissive"
            problems = [(i, self._problem(m)) for i, m in enumerate(data)]
            errors = [{"index": i, "message": p} for i, p in problems if p]
            if errors and not permissive:
                return error(422, "validation_error", errors[0]["message"])
            ids = [{"id": self._take(m)} for i, m in enumerate(data) if not problems[i][1]]
            body: dict[str, Any] = {"data": ids}
            if permissive:
                body["errors"] = errors
            return Reply.json(200, body, **self.limits())
        return error(404, "not_found", "Not found")

    def _problem(self, message: dict[str, Any]) -> str | None:
        everyone = [
            *_addresses(message.get("to")),
            *_addresses(message.get("cc")),
            *_addresses(message.get("bcc")),
        ]
        if not message.get("from") or not message.get("to") or not message.get("subject"):
            return "Missing `from`, `to` or `subject` field."
        refusal = self.refusal_for(everyone)
        return refusal[1] if refusal else None

    def _take(self, message: dict[str, Any]) -> str:
        everyone = [
            *_addresses(message.get("to")),
            *_addresses(message.get("cc")),
            *_addresses(message.get("bcc")),
        ]
        return self.take(everyone, message)


class SendGridServer(ProviderServer):
    title = "SendGrid"

    def __init__(self, token: str = "SG.test-0123456789") -> None:
        super().__init__(token)
        # The key's scopes: a "Mail Send" restricted key has only mail.send and may not read
        # the account (403 "access forbidden").
        self.scopes = ["mail.send", "user.account.read", "user.credits.read"]

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}"

    def bad_token(self) -> Reply:
        return Reply.json(401, {"errors": [{"field": None, "message": "authorization required"}]})

    def limits(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": "600",
            "X-RateLimit-Remaining": "599",
            "X-RateLimit-Reset": str(int(time.time()) + 60),
        }

    def get(self, path: str) -> Reply:
        forbidden = Reply.json(403, {"errors": [{"field": None, "message": "access forbidden"}]})
        if path == "/v3/scopes":
            return Reply.json(200, {"scopes": self.scopes})
        if path == "/v3/user/account":
            if "user.account.read" not in self.scopes:
                return forbidden
            return Reply.json(200, {"type": "paid", "reputation": 99.7})
        if path == "/v3/user/credits" and "user.credits.read" not in self.scopes:
            return forbidden
        if path == "/v3/user/credits":
            return Reply.json(
                200,
                {
                    "remain": 98000,
                    "total": 100000,
                    "overage": 0,
                    "used": 2000,
                    "last_reset": "2026-12-01",
                    "next_reset": "2027-01-01",
                    "reset_frequency": "monthly",
                },
            )
        return Reply.json(404, {"errors": [{"field": None, "message": "not found"}]})

    def post(self, record: Recorded) -> Reply:
        if record.path != "/v3/mail/send":
            return Reply.json(404, {"errors": [{"field": None, "message": "not found"}]})
        data = record.json()
        content = [c.get("type") for c in data.get("content", [])]
        if (
            "text/html" in content
            and "text/plain" in content
            and content.index("text/plain") > content.index("text/html")
        ):
            return Reply.json(
                400,
                {
                    "errors": [
                        {
                            "message": "Following RFC 1341, section 7.2, if either text/html "
                            "or text/plain are to be sent in your email: text/plain needs to be "
                            "first, followed by text/html, followed by any other content.",
                            "field": "content",
                            "help": None,
                        }
                    ]
                },
            )
        everyone = [
            box["email"]
            for person in data.get("personalizations", [])
            for kind in ("to", "cc", "bcc")
            for box in person.get(kind, [])
        ]
        refusal = self.refusal_for(everyone)
        if refusal is not None:
            return Reply.json(
                refusal[0],
                {
                    "errors": [
                        {
                            "message": refusal[1],
                            "field": "personalizations.0.to.0.email",
                            "help": None,
                        }
                    ]
                },
                **self.limits(),
            )
        message_id = self.take(everyone, data)
        return Reply(202, b"", {"X-Message-Id": message_id, **self.limits()})


class MailgunServer(ProviderServer):
    title = "Mailgun"

    def __init__(self, token: str = "key-test-0123456789", domain: str = "mg.acme.example") -> None:
        super().__init__(token)
        self.domain = domain

    def authorized(self, headers: dict[str, str]) -> bool:
        expected = "Basic " + base64.b64encode(f"api:{self.token}".encode()).decode()
        return headers.get("authorization") == expected

    def bad_token(self) -> Reply:
        return Reply(401, b"Forbidden", {"Content-Type": "text/plain"})

    def get(self, path: str) -> Reply:
        if path == f"/v4/domains/{self.domain}":
            return Reply.json(
                200,
                {
                    "domain": {"name": self.domain, "state": "active", "type": "custom"},
                    "receiving_dns_records": [],
                    "sending_dns_records": [],
                },
            )
        if path == "/v5/accounts/limit/custom/monthly":
            return Reply.json(200, {"limit": 50000, "current": 1200, "period": "1m"})
        return Reply.json(404, {"message": "not found"})

    def post(self, record: Recorded) -> Reply:
        if record.path != f"/v3/{self.domain}/messages.mime":
            return Reply.json(404, {"message": "not found"})
        form, files = parse_form(record.headers.get("content-type", ""), record.body)
        if "message" not in files or not form.get("to"):
            return Reply.json(400, {"message": "'to' parameter is missing"})
        recipients = [a for value in form["to"] for a in _addresses(value)]
        refusal = self.refusal_for(recipients)
        if refusal is not None:
            return Reply.json(refusal[0], {"message": refusal[1]})
        message_id = self.take(recipients, files["message"], form)
        return Reply.json(
            200, {"id": f"<{message_id}@{self.domain}>", "message": "Queued. Thank you."}
        )


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    """multipart/form-data (RFC 7578), split by its boundary so that a file's bytes stay exact."""
    message = EmailMessage()
    message["Content-Type"] = content_type
    boundary = message.get_boundary()
    assert boundary, f"no boundary in {content_type!r}"
    form: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers = BytesParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_param("filename", header="content-disposition")
        assert isinstance(name, str)
        if filename is not None:
            files[name] = content
        else:
            form.setdefault(name, []).append(content.decode("utf-8"))
    return form, files


SERVERS: dict[str, type[ProviderServer]] = {
    "postmark": PostmarkServer,
    "resend": ResendServer,
    "sendgrid": SendGridServer,
    "mailgun": MailgunServer,
}
TOKEN_ENV = {
    "postmark": "POSTMARK_SERVER_TOKEN",
    "resend": "RESEND_API_KEY",
    "sendgrid": "SENDGRID_API_KEY",
    "mailgun": "MAILGUN_API_KEY",
}
