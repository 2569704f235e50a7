"""One-off messages (`mailcli send`): templates rendered once into a `mailcli.Message`.

The command line's options become a `Message` here (Jinja applied, files read, addresses and
headers checked); sending it is the library's `Mailer.send`, like any application's message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcli.addresses import AddressError, Mailbox, parse_mailbox
from mailcli.campaign import HEADER_NAME_RE, RESERVED_HEADERS
from mailcli.compose import Message
from mailcli.delivery import Delivery, DeliveryStatus
from mailcli.errors import DataError, ExitCode, InputFileError, UsageError, open_error
from mailcli.message import smtp_address
from mailcli.render import Content, Renderer, RenderError


@dataclass(frozen=True, slots=True)
class OneOff:
    """What `mailcli send` was asked to send."""

    to: tuple[str, ...]
    subject: str
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    text: str | None = None
    text_file: Path | None = None
    html_file: Path | None = None
    markdown_file: Path | None = None
    variables: tuple[str, ...] = ()
    attachments: tuple[Path, ...] = ()
    sender: str | None = None
    reply_to: str | None = None
    headers: tuple[str, ...] = ()  # "Name: value" (templated)
    unsubscribe: str | None = None  # https URL or mailto (templated)
    list_id: str | None = None
    inline_images: tuple[str, ...] = ()  # "CID=FILE"


def parse_headers(items: tuple[str, ...]) -> dict[str, str]:
    """`Name: value` strings to a dict; raise UsageError for a malformed or reserved one."""
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not HEADER_NAME_RE.match(name):
            raise UsageError(f"--header takes 'Name: value', not {item!r}")
        if name.lower() in RESERVED_HEADERS:
            raise UsageError(f"--header {name}: mailcli sets this header itself")
        if "\r" in value or "\n" in value:
            raise UsageError(f"--header {name}: the value contains a line break")
        result[name] = value
    return result


def parse_inline_images(items: tuple[str, ...]) -> dict[str, Path]:
    """`CID=FILE` strings to a dict; the files must exist."""
    result: dict[str, Path] = {}
    for item in items:
        cid, sep, file = item.partition("=")
        if not sep or not cid.strip() or not file.strip():
            raise UsageError(f"--inline-image takes CID=FILE, not {item!r}")
        path = Path(file.strip())
        if not path.is_file():
            raise InputFileError("inline image not found", path=path)
        result[cid.strip()] = path
    return result


def parse_vars(items: tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` strings to a dict; raise UsageError for a malformed one."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"--var takes KEY=VALUE with KEY a name, not {item!r}")
        result[key.strip()] = value
    return result


def _mailboxes(option: str, values: tuple[str, ...]) -> list[Mailbox]:
    boxes = []
    for value in values:
        try:
            boxes.append(parse_mailbox(value))
        except AddressError as exc:
            raise DataError(f"{option} {value!r}: {exc}") from None
    return boxes


def _read(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{what} is not UTF-8 text", path=path) from None
    except OSError as exc:
        raise open_error(path, exc, what) from None


def one_off_message(spec: OneOff, *, sender_fallback: str | None) -> Message:
    """Render what `mailcli send` was given into one Message (raises UsageError, DataError)."""
    if not spec.to:
        raise UsageError("give at least one --to")
    if spec.text is not None and spec.text_file is not None:
        raise UsageError("use --text or --text-file, not both")
    if spec.markdown_file is not None and (
        spec.text is not None or spec.text_file or spec.html_file
    ):
        raise UsageError(
            "--markdown-file makes both parts; do not combine it with "
            "--text, --text-file or --html-file"
        )
    sender = spec.sender or sender_fallback or os.environ.get("MAILCLI_FROM")
    if not sender:
        raise UsageError("no sender: give --from, MAILCLI_FROM, or `from` in the SMTP profile")
    _mailboxes("--from", (sender,))
    if spec.reply_to is not None:
        _mailboxes("--reply-to", (spec.reply_to,))
    to = _mailboxes("--to", spec.to)
    cc = _mailboxes("--cc", spec.cc)
    bcc = _mailboxes("--bcc", spec.bcc)
    text = spec.text if spec.text is not None else _read(spec.text_file, "text file")
    html = _read(spec.html_file, "HTML file")
    markdown = _read(spec.markdown_file, "Markdown file")
    if text is None and html is None and markdown is None:
        raise UsageError("give a body: --text, --text-file, --html-file or --markdown-file")
    for path in spec.attachments:
        if not path.is_file():
            raise InputFileError(
                "attachment not found" if not path.exists() else "attachment is not a file",
                path=path,
            )
    if spec.list_id is not None and ("\r" in spec.list_id or "\n" in spec.list_id):
        raise UsageError("--list-id contains a line break")
    unsubscribe = mailto = None
    if spec.unsubscribe is not None:
        if spec.unsubscribe.startswith("mailto:"):
            mailto = spec.unsubscribe
        elif spec.unsubscribe.startswith("https://"):
            unsubscribe = spec.unsubscribe
        else:
            raise UsageError("--unsubscribe takes an https:// URL or a mailto: address")
    content = Content(
        folder=Path.cwd(),
        subject=spec.subject,
        text=text,
        html=html,
        markdown=markdown,
        headers=parse_headers(spec.headers),
        unsubscribe=unsubscribe,
        unsubscribe_mailto=mailto,
    )
    images = parse_inline_images(spec.inline_images)
    try:
        rendered = Renderer(content).render(parse_vars(spec.variables))
    except RenderError as exc:
        raise DataError(str(exc)) from None
    message = Message(
        rendered.subject,
        [str(m) for m in to],
        rendered.text,
        rendered.html,
        sender=sender,
        cc=[str(m) for m in cc],
        bcc=[str(m) for m in bcc],
        reply_to=spec.reply_to,
        extra_headers=dict(rendered.headers),
        inline_images=dict(images),
        unsubscribe=[t for t in (rendered.unsubscribe_mailto, rendered.unsubscribe) if t],
        list_id=spec.list_id,
    )
    for path in spec.attachments:
        message.attach(path)
    return message


def exit_code(delivery: Delivery) -> ExitCode:
    """The exit code of `mailcli send` for what became of its message."""
    if delivery.status is DeliveryStatus.SENT and not delivery.refused:
        return ExitCode.OK
    if delivery.status is DeliveryStatus.SUPPRESSED:
        return ExitCode.OK  # being suppressed is not a failure (the contract's rule)
    if delivery.status is DeliveryStatus.FAILED and delivery.code is None:
        return ExitCode.DATAERR  # not sendable as it is (no server refused it): nothing was sent
    if delivery.status in (DeliveryStatus.DEFERRED, DeliveryStatus.UNKNOWN) or any(
        r.temporary for r in delivery.refused.values()
    ):
        return ExitCode.TEMPFAIL
    return ExitCode.REJECTED


def report(message: Message, delivery: Delivery) -> dict[str, Any]:
    """The `send --json` object: the Message-ID, the envelope sender, who took it, who not."""
    sender = _mailboxes("--from", (str(message.sender),))[0] if message.sender else None
    return {
        "status": delivery.status.value,
        "message_id": delivery.message_id,
        "mail_from": smtp_address(sender.addr) if sender else None,
        "accepted": list(delivery.recipients),
        "refused": {addr: str(r) for addr, r in delivery.refused.items()},
        "suppressed": list(delivery.suppressed),
        "reply": f"{delivery.code} {delivery.reply}" if delivery.code else delivery.reply,
        "exit_code": int(exit_code(delivery)),
    }
