"""The HTTP API providers: how each one takes a message, answers, and checks a token.

Each provider maps a finished message (`Built`) to its request body, and its answers back onto
mailcli's states; `mailcli.httpapi` does the HTTP (one kept-alive connection, retries, the
unknown rule) for all of them. The shapes follow each provider's API reference:

- Postmark: https://postmarkapp.com/developer/api/email-api (POST /email/batch, up to 500
  messages and 50 MB a call; an ErrorCode per message), /developer/api/server-api (GET /server).
- Resend: https://resend.com/docs/api-reference/emails/send-batch-emails (POST /emails/batch, up
  to 100 a call, `Idempotency-Key`), /docs/api-reference/emails/send-email (POST /emails).
- SendGrid: https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send (POST
  /v3/mail/send, one message a request, 202 with X-Message-Id).
- Mailgun: https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages
  (POST /v3/{domain}/messages.mime: the MIME bytes as mailcli built them, DKIM included).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from mailcli.apiconf import ApiConfig
from mailcli.delivery import Delivery, DeliveryStatus
from mailcli.envelope import Built
from mailcli.mailparts import Mailbox, Parts, mailbox_text, read_parts

MB = 1024 * 1024


class Uncarried(Exception):
    """A message this provider cannot take as it is (the reason is the text)."""


class Misconfigured(Exception):
    """A 2xx answer that refuses every message for the account's or the sender's sake."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class Item:
    """One message ready for a call: its JSON (or MIME) body and what it adds to a call."""

    built: Built
    body: bytes
    batchable: bool = True  # may share a call with others (Resend: no attachments in batches)
    form: Mapping[str, Any] = field(default_factory=dict)  # Mailgun's form fields


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, fully built, so that a retry sends exactly the same bytes."""

    method: str
    path: str
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, Any] | None = None
    files: Mapping[str, tuple[str, bytes, str]] | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What an HTTP response said, for the provider to read: status, headers and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (None when it is not JSON)."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):  # not JSON, or nested past any sense
            return None

    @property
    def text(self) -> str:
        """The body as one line of text, shortened."""
        return " ".join(self.body.decode("utf-8", "replace").split())[:300]


def sent(built: Built, status: int, provider_id: str, title: str) -> Delivery:
    """An accepted message."""
    return Delivery(
        DeliveryStatus.SENT,
        built.message_id,
        built.rcpt_to,
        code=status,
        reply=f"accepted by {title} as {provider_id}" if provider_id else f"accepted by {title}",
        provider_id=provider_id or None,
    )


def refused(built: Built, code: int, text: str, *, temporary: bool = False) -> Delivery:
    """A message the provider refused: `failed`, or `deferred` when it may take it later."""
    status = DeliveryStatus.DEFERRED if temporary else DeliveryStatus.FAILED
    return Delivery(status, built.message_id, code=code, reply=text)


def answerless(built: Built, reason: str) -> Delivery:
    """A message the provider may have taken, with no answer that says so: `unknown`."""
    return Delivery(DeliveryStatus.UNKNOWN, built.message_id, reply=reason)


class Provider:
    """What differs between providers; `mailcli.httpapi.ApiTransport` does the rest."""

    name = ""
    title = ""
    batch_max = 1  # messages a call
    call_bytes_max = 10 * MB  # request body bytes a call
    message_bytes_max = 10 * MB
    recipients_max = 50  # To + Cc + Bcc of one message
    idempotent = False  # a retried request cannot deliver twice (an Idempotency-Key)
    headers_as_mapping = True  # custom headers go as a JSON object: one value a name
    # Campaign keys it cannot carry, and why.
    cannot: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(self, config: ApiConfig) -> None:
        self.config = config

    def auth(self, token: str) -> dict[str, str]:
        """The request headers that carry the token."""
        return {"Authorization": f"Bearer {token}"}

    def item(self, built: Built) -> Item:
        """The message as this provider's body; raises Uncarried."""
        parts = read_parts(built)
        count = len(parts.to) + len(parts.cc) + len(parts.bcc)
        if count > self.recipients_max:
            raise Uncarried(
                f"{count} recipients in one message; {self.title} takes at most "
                f"{self.recipients_max}"
            )
        if parts.signed:
            raise Uncarried(f"it carries a DKIM signature, which {self.title} would drop")
        if not parts.to:
            raise Uncarried(f"it has no To address (only Bcc), and {self.title} needs one")
        names = [name.lower() for name, _ in parts.headers]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None and self.headers_as_mapping:
            raise Uncarried(f"the header {twice!r} appears twice; {self.title} takes one value")
        body = json.dumps(self.payload(parts), ensure_ascii=False, separators=(",", ":"))
        data = body.encode("utf-8")
        if len(data) > self.message_bytes_max:
            raise Uncarried(
                f"{len(data)} bytes as {self.title} takes it; the most is "
                f"{self.message_bytes_max // MB} MB"
            )
        return Item(built, data, batchable=self.batchable(parts))

    def payload(self, parts: Parts) -> dict[str, Any]:
        """The JSON object of one message."""
        raise NotImplementedError

    def batchable(self, parts: Parts) -> bool:
        """The message may go in a call with others."""
        return True

    def request(self, items: Sequence[Item], key: str | None) -> Request:
        """The request that carries `items`."""
        raise NotImplementedError

    def accepted(self, answer: Answer, items: Sequence[Item]) -> list[Delivery]:
        """Per-message outcomes of a 2xx answer; raises ValueError when it cannot be read."""
        raise NotImplementedError

    def refusal(self, answer: Answer) -> tuple[int, str]:
        """The code and text of an answer that refused the whole call."""
        data = answer.json()
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return answer.status, f"{self.title}: {data['message']}"
        return answer.status, f"{self.title}: HTTP {answer.status} {answer.text}".rstrip()

    def token_refused(self, answer: Answer) -> bool:
        """The answer says the token is wrong or may not do this."""
        return answer.status in (401, 403)

    def wait_again(self, answer: Answer) -> bool:
        """Beyond 429 and 500/503: an answer that asks to try the same request again later."""
        return False

    def temporary(self, answer: Answer) -> bool:
        """A refusal of the whole call that may clear by itself (nothing was taken)."""
        return False

    def misconfigured(self, answer: Answer) -> bool:
        """A refusal about the account, the sender or the endpoint, not about one message:
        no point sending the rest (after `token_refused`, which is checked first)."""
        return answer.status in (403, 404, 405)

    def account_requests(self) -> list[str]:
        """Read-only paths that check the token (test-connection), the main one first."""
        raise NotImplementedError

    def account(self, answers: Sequence[Answer]) -> dict[str, Any]:
        """What the account answers show: `name`, and `limits` where the provider has any."""
        raise NotImplementedError

    def files(self, parts: Parts) -> list[dict[str, Any]]:
        """Attachments and inline images as most JSON APIs take them."""
        raise NotImplementedError


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _joined(boxes: Sequence[Mailbox]) -> str:
    return ", ".join(mailbox_text(b) for b in boxes)


class Postmark(Provider):
    """Postmark: /email/batch, up to 500 messages a call, an ErrorCode per message."""

    name, title = "postmark", "Postmark"
    headers_as_mapping = False  # a list of {Name, Value}
    batch_max = 500
    call_bytes_max = 50 * MB
    message_bytes_max = 10 * MB
    recipients_max = 50
    # Per-message codes that may clear by themselves: maintenance, out of credits, rate limit.
    TEMPORARY = frozenset((100, 405, 429))
    # The sender signature missing or unconfirmed, the account pending or barred from sending.
    SENDER_CODES = frozenset((400, 401, 412, 413))
    # https://postmarkapp.com/support/article/1109-what-file-types-are-forbidden-as-attachments
    FORBIDDEN = frozenset(
        "vbs exe bin bat chm com cpl crt hlp hta inf ins isp jse lnk mdb pcd pif reg scr "  # noqa: SIM905
        "sct shs vbe vba wsf wsh wsl msc msi msp mst".split()
    )
    cannot = MappingProxyType(
        {"dkim": "Postmark signs every message with the DKIM key of your sender domain"}
    )

    def auth(self, token: str) -> dict[str, str]:
        """Postmark's server token header."""
        return {"X-Postmark-Server-Token": token}

    def payload(self, parts: Parts) -> dict[str, Any]:
        """Postmark's message object (PascalCase fields)."""
        for file in parts.attachments:
            extension = file.filename.rsplit(".", 1)[-1].lower() if "." in file.filename else ""
            if extension in self.FORBIDDEN:
                raise Uncarried(f"Postmark refuses .{extension} attachments ({file.filename})")
        body: dict[str, Any] = {"From": mailbox_text(parts.sender), "To": _joined(parts.to)}
        if parts.cc:
            body["Cc"] = _joined(parts.cc)
        if parts.bcc:
            body["Bcc"] = _joined(parts.bcc)
        if parts.reply_to:
            body["ReplyTo"] = _joined(parts.reply_to)
        body["Subject"] = parts.subject
        if parts.text is not None:
            body["TextBody"] = parts.text
        if parts.html is not None:
            body["HtmlBody"] = parts.html
        if parts.headers:
            body["Headers"] = [{"Name": n, "Value": v} for n, v in parts.headers]
        if parts.files:
            body["Attachments"] = self.files(parts)
        if self.config.tag:
            body["Tag"] = self.config.tag
        if self.config.metadata:
            body["Metadata"] = dict(self.config.metadata)
        body["MessageStream"] = self.config.stream or "outbound"
        return body

    def files(self, parts: Parts) -> list[dict[str, Any]]:
        """Postmark's Attachments: an inline image has ContentID `cid:ID`."""
        out = []
        for f in parts.files:
            entry = {"Name": f.filename, "Content": _b64(f.data), "ContentType": f.content_type}
            if f.content_id is not None:
                entry["ContentID"] = f"cid:{f.content_id}"
            out.append(entry)
        return out

    def request(self, items: Sequence[Item], key: str | None) -> Request:
        """POST /email/batch with a JSON array."""
        return Request(
            "POST",
            "/email/batch",
            content=b"[" + b",".join(i.body for i in items) + b"]",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )

    def accepted(self, answer: Answer, items: Sequence[Item]) -> list[Delivery]:
        """One result per message, in order: ErrorCode 0 is accepted."""
        data = answer.json()
        if not isinstance(data, list) or len(data) != len(items):
            raise ValueError("a batch answer that does not hold one result per message")
        codes = [r.get("ErrorCode") if isinstance(r, dict) else None for r in data]
        if all(code in self.SENDER_CODES for code in codes):
            # The sender or the account, for every message: nothing was taken, and the next
            # call would hear the same.
            first = data[0]
            raise Misconfigured(first["ErrorCode"], f"Postmark: {first.get('Message', '')}")
        out = []
        for item, result in zip(items, data, strict=True):
            code = result.get("ErrorCode") if isinstance(result, dict) else None
            if not isinstance(code, int):
                raise ValueError("a batch result without an ErrorCode")
            if code in self.SENDER_CODES:
                # Some messages of the call went: these wait for the sender to be fixed.
                text = f"Postmark: {result.get('Message', '')}"
                out.append(refused(item.built, code, text, temporary=True))
            elif code == 0:
                out.append(
                    sent(item.built, answer.status, str(result.get("MessageID", "")), "Postmark")
                )
            else:
                text = f"Postmark: {result.get('Message', '')}".rstrip(": ")
                out.append(refused(item.built, code, text, temporary=code in self.TEMPORARY))
        return out

    def refusal(self, answer: Answer) -> tuple[int, str]:
        """{ErrorCode, Message}: Postmark's code, not the HTTP status."""
        data = answer.json()
        if isinstance(data, dict) and isinstance(data.get("ErrorCode"), int):
            return data["ErrorCode"], f"Postmark: {data.get('Message', '')}"
        return super().refusal(answer)

    def temporary(self, answer: Answer) -> bool:
        """Maintenance, out of credits, or the rate limit, for the whole call."""
        data = answer.json()
        return isinstance(data, dict) and data.get("ErrorCode") in self.TEMPORARY

    def misconfigured(self, answer: Answer) -> bool:
        """Sender signature missing or unconfirmed, account pending or not allowed to send."""
        data = answer.json()
        return super().misconfigured(answer) or (
            isinstance(data, dict) and data.get("ErrorCode") in self.SENDER_CODES
        )

    def token_refused(self, answer: Answer) -> bool:
        """401, or ErrorCode 10 (a bad or missing token)."""
        if answer.status == 401:
            return True
        data = answer.json()
        return isinstance(data, dict) and data.get("ErrorCode") == 10

    def account_requests(self) -> list[str]:
        """GET /server: the server the token belongs to."""
        return ["/server"]

    def account(self, answers: Sequence[Answer]) -> dict[str, Any]:
        """The server's name and delivery type."""
        data = answers[0].json() or {}
        return {
            "name": data.get("Name"),
            "id": data.get("ID"),
            "delivery_type": data.get("DeliveryType"),
            "limits": None,
        }


class Resend(Provider):
    """Resend: /emails/batch, up to 100 a call, each call with an Idempotency-Key."""

    name, title = "resend", "Resend"
    batch_max = 100
    call_bytes_max = 40 * MB
    message_bytes_max = 40 * MB
    recipients_max = 50
    idempotent = True
    cannot = MappingProxyType(
        {"dkim": "Resend signs every message with the DKIM key of your sender domain"}
    )

    def payload(self, parts: Parts) -> dict[str, Any]:
        """Resend's email object (snake_case fields; tags are name/value pairs)."""
        body: dict[str, Any] = {
            "from": mailbox_text(parts.sender),
            "to": [mailbox_text(b) for b in parts.to],
            "subject": parts.subject,
        }
        if parts.cc:
            body["cc"] = [mailbox_text(b) for b in parts.cc]
        if parts.bcc:
            body["bcc"] = [mailbox_text(b) for b in parts.bcc]
        if parts.reply_to:
            body["reply_to"] = [mailbox_text(b) for b in parts.reply_to]
        if parts.text is not None:
            body["text"] = parts.text
        if parts.html is not None:
            body["html"] = parts.html
        if parts.headers:
            body["headers"] = dict(parts.headers)
        if parts.files:
            body["attachments"] = self.files(parts)
        tags = [{"name": "tag", "value": self.config.tag}] if self.config.tag else []
        tags += [{"name": k, "value": v} for k, v in self.config.metadata.items()]
        if tags:
            body["tags"] = tags
        return body

    def files(self, parts: Parts) -> list[dict[str, Any]]:
        """Resend's attachments: base64 content; inline images with `content_id`."""
        out = []
        for f in parts.files:
            entry = {
                "filename": f.filename,
                "content": _b64(f.data),
                "content_type": f.content_type,
            }
            if f.content_id is not None:
                entry["content_id"] = f.content_id
            out.append(entry)
        return out

    def batchable(self, parts: Parts) -> bool:
        """Resend's batch endpoint takes no attachments: such a message goes on its own."""
        return not parts.files

    def request(self, items: Sequence[Item], key: str | None) -> Request:
        """POST /emails/batch (or /emails for one message that cannot be batched)."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        if len(items) == 1 and not items[0].batchable:
            return Request("POST", "/emails", content=items[0].body, headers=headers)
        # Permissive: a refused message does not take the other 99 down with it.
        headers["x-batch-validation"] = "permissive"
        body = b"[" + b",".join(i.body for i in items) + b"]"
        return Request("POST", "/emails/batch", content=body, headers=headers)

    def accepted(self, answer: Answer, items: Sequence[Item]) -> list[Delivery]:
        """{data: [{id}, ...], errors: [{index, message}]} for a batch, {id} for one message.

        `data` holds the ids of the accepted messages in order; `errors` names the others by
        their index in the request.
        """
        data = answer.json()
        if not isinstance(data, dict):
            raise ValueError("an answer that is not a JSON object")
        if "id" in data and len(items) == 1 and "data" not in data:
            return [sent(items[0].built, answer.status, str(data["id"]), "Resend")]
        ids, errors = data.get("data"), data.get("errors") or []
        if not isinstance(ids, list) or not isinstance(errors, list):
            raise ValueError("an answer without the ids of the messages")
        refusals = {e["index"]: str(e.get("message", "")) for e in errors if isinstance(e, dict)}
        if len(ids) + len(refusals) != len(items) or not all(
            isinstance(i, int) and 0 <= i < len(items) for i in refusals
        ):
            raise ValueError("a batch answer that does not account for every message")
        accepted = iter(ids)
        out = []
        for index, item in enumerate(items):
            if index in refusals:
                out.append(refused(item.built, 422, f"Resend: {refusals[index]}"))
            else:
                entry = next(accepted)
                out.append(sent(item.built, answer.status, str(entry.get("id", "")), "Resend"))
        return out

    def refusal(self, answer: Answer) -> tuple[int, str]:
        """{statusCode, message, name}."""
        data = answer.json()
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            name = f" ({data['name']})" if data.get("name") else ""
            return answer.status, f"Resend: {data['message']}{name}"
        return super().refusal(answer)

    def token_refused(self, answer: Answer) -> bool:
        """401, or 403 for a key that is not valid (a 403 also refuses an unverified domain)."""
        if answer.status == 401:
            return True
        data = answer.json()
        name = data.get("name") if isinstance(data, dict) else None
        return answer.status == 403 and name in ("invalid_api_key", "restricted_api_key")

    def wait_again(self, answer: Answer) -> bool:
        """409 concurrent_idempotent_requests: the first request with this key is still busy."""
        data = answer.json()
        return (
            answer.status == 409
            and isinstance(data, dict)
            and data.get("name") == "concurrent_idempotent_requests"
        )

    def account_requests(self) -> list[str]:
        """GET /domains: the sending domains of the account."""
        return ["/domains"]

    def account(self, answers: Sequence[Answer]) -> dict[str, Any]:
        """The domains and their status; a sending-only key cannot list them."""
        answer = answers[0]
        if answer.status == 401:
            return {"name": "(a sending-only API key: it cannot list domains)", "limits": None}
        data = answer.json() or {}
        domains = [
            f"{d.get('name')} ({d.get('status')})"
            for d in data.get("data", [])
            if isinstance(d, dict)
        ]
        return {"name": ", ".join(domains) or "(no domains)", "limits": None}


class SendGrid(Provider):
    """SendGrid: /v3/mail/send, one message a request over one kept-alive connection."""

    name, title = "sendgrid", "SendGrid"
    batch_max = 1
    call_bytes_max = 30 * MB
    message_bytes_max = 30 * MB
    recipients_max = 1000
    cannot = MappingProxyType(
        {"dkim": "SendGrid signs every message with the DKIM key of your sender domain"}
    )

    def payload(self, parts: Parts) -> dict[str, Any]:
        """SendGrid's v3 mail object: personalizations, content (text first), attachments."""

        def boxes(values: Sequence[Mailbox]) -> list[dict[str, str]]:
            return [{"email": a, "name": n} if n else {"email": a} for n, a in values]

        person: dict[str, Any] = {"to": boxes(parts.to)}
        if parts.cc:
            person["cc"] = boxes(parts.cc)
        if parts.bcc:
            person["bcc"] = boxes(parts.bcc)
        body: dict[str, Any] = {
            "personalizations": [person],
            "from": boxes([parts.sender])[0],
            "subject": parts.subject,
        }
        if len(parts.reply_to) == 1:
            body["reply_to"] = boxes(parts.reply_to)[0]
        elif parts.reply_to:
            body["reply_to_list"] = boxes(parts.reply_to)
        content = []
        if parts.text is not None:
            content.append({"type": "text/plain", "value": parts.text})
        if parts.html is not None:
            content.append({"type": "text/html", "value": parts.html})
        body["content"] = content
        if parts.files:
            body["attachments"] = self.files(parts)
        if parts.headers:
            body["headers"] = dict(parts.headers)
        if self.config.tag:
            body["categories"] = [self.config.tag]
        if self.config.metadata:
            body["custom_args"] = dict(self.config.metadata)
        return body

    def files(self, parts: Parts) -> list[dict[str, Any]]:
        """SendGrid's attachments: disposition inline with content_id for images."""
        out = []
        for f in parts.files:
            entry = {"content": _b64(f.data), "type": f.content_type, "filename": f.filename}
            if f.content_id is not None:
                entry["disposition"] = "inline"
                entry["content_id"] = f.content_id
            else:
                entry["disposition"] = "attachment"
            out.append(entry)
        return out

    def request(self, items: Sequence[Item], key: str | None) -> Request:
        """POST /v3/mail/send with one message."""
        (item,) = items
        return Request(
            "POST", "/v3/mail/send", content=item.body, headers={"Content-Type": "application/json"}
        )

    def accepted(self, answer: Answer, items: Sequence[Item]) -> list[Delivery]:
        """202 Accepted; the id is the X-Message-Id header."""
        (item,) = items
        return [sent(item.built, answer.status, answer.headers.get("x-message-id", ""), "SendGrid")]

    def refusal(self, answer: Answer) -> tuple[int, str]:
        """{errors: [{message, field}]}."""
        data = answer.json()
        if isinstance(data, dict) and isinstance(data.get("errors"), list):
            texts = [
                f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
                for e in data["errors"]
                if isinstance(e, dict)
            ]
            return answer.status, "SendGrid: " + "; ".join(texts)
        return super().refusal(answer)

    def token_refused(self, answer: Answer) -> bool:
        """401; a 403 only when it says the key lacks the permission ("access forbidden"), not
        when it refuses the sender (an unverified Sender Identity)."""
        if answer.status == 401:
            return True
        return answer.status == 403 and "access forbidden" in answer.text.lower()

    def account_requests(self) -> list[str]:
        """GET /v3/scopes (any key may: is mail.send there?), then /v3/user/account (type and
        reputation) and /v3/user/credits (limits), which a sending-only key may not read."""
        return ["/v3/scopes", "/v3/user/account", "/v3/user/credits"]

    def account(self, answers: Sequence[Answer]) -> dict[str, Any]:
        """The key's scopes; the account type, reputation and credits where it may read them."""
        scopes = (answers[0].json() or {}).get("scopes") or []
        sends = "mail.send" in scopes
        name = "a key with mail.send" if sends else "a key WITHOUT the mail.send scope"
        if len(answers) > 1 and answers[1].status == 200:
            data = answers[1].json() or {}
            name = (
                f"{data.get('type', '?')} account, reputation {data.get('reputation', '?')}; "
                + name
            )
        limits = None
        if len(answers) > 2 and answers[2].status == 200:
            credits = answers[2].json() or {}
            limits = {k: credits.get(k) for k in ("total", "remain", "used", "next_reset")}
        return {"name": name, "limits": limits, "can_send": sends}


class Mailgun(Provider):
    """Mailgun: /v3/{domain}/messages.mime, the MIME bytes as built (DKIM and every header)."""

    name, title = "mailgun", "Mailgun"
    batch_max = 1
    call_bytes_max = 25 * MB
    message_bytes_max = 25 * MB
    recipients_max = 1000

    def auth(self, token: str) -> dict[str, str]:
        """HTTP Basic, user `api`."""
        return {"Authorization": "Basic " + _b64(f"api:{token}".encode())}

    def item(self, built: Built) -> Item:
        """The bytes as they are; the envelope recipients go in `to`."""
        if len(built.data) > self.message_bytes_max:
            raise Uncarried(f"{len(built.data)} bytes; Mailgun takes at most 25 MB")
        if len(built.rcpt_to) > self.recipients_max:
            raise Uncarried(f"{len(built.rcpt_to)} recipients; Mailgun takes at most 1000")
        form: dict[str, Any] = {"to": list(built.rcpt_to)}
        if self.config.tag:
            form["o:tag"] = self.config.tag
        for key, value in self.config.metadata.items():
            form[f"v:{key}"] = value
        return Item(built, built.data, form=form)

    def request(self, items: Sequence[Item], key: str | None) -> Request:
        """POST /v3/{domain}/messages.mime, multipart/form-data."""
        (item,) = items
        return Request(
            "POST",
            f"/v3/{self.config.domain}/messages.mime",
            data=item.form,
            files={"message": ("message.mime", item.body, "message/rfc822")},
        )

    def accepted(self, answer: Answer, items: Sequence[Item]) -> list[Delivery]:
        """{id, message: "Queued. Thank you."}."""
        (item,) = items
        data = answer.json()
        if not isinstance(data, dict):
            raise ValueError("an answer that is not a JSON object")
        return [sent(item.built, answer.status, str(data.get("id", "")), "Mailgun")]

    def token_refused(self, answer: Answer) -> bool:
        """401 Forbidden: a wrong key (a 403 is about the message or the domain)."""
        return answer.status == 401

    def account_requests(self) -> list[str]:
        """GET /v4/domains/{domain} (the domain and its state), then the monthly limit."""
        return [f"/v4/domains/{self.config.domain}", "/v5/accounts/limit/custom/monthly"]

    def account(self, answers: Sequence[Answer]) -> dict[str, Any]:
        """The domain's name and state; the custom monthly limit where one is set."""
        data = (answers[0].json() or {}).get("domain", {})
        limits = None
        if len(answers) > 1 and answers[1].status == 200:
            limit = answers[1].json() or {}
            limits = {k: limit.get(k) for k in ("limit", "current", "period")}
        return {"name": f"{data.get('name')} ({data.get('state')})", "limits": limits}


PROVIDER_CLASSES: Mapping[str, type[Provider]] = {
    c.name: c for c in (Postmark, Resend, SendGrid, Mailgun)
}


def provider_for(config: ApiConfig) -> Provider:
    """The provider object for a configuration."""
    return PROVIDER_CLASSES[config.provider](config)
