"""One-off messages (`mailcli send`): several To, Cc and Bcc, one message, one transaction."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailcli.addresses import AddressError, Mailbox, parse_mailbox
from mailcli.campaign import HEADER_NAME_RE, RESERVED_HEADERS, DkimConfig
from mailcli.envelope import Built
from mailcli.errors import (
    DataError,
    ExitCode,
    InputFileError,
    TempFailError,
    UnavailableError,
    UsageError,
    open_error,
)
from mailcli.message import BuildError, MessageBuilder
from mailcli.render import Content, Renderer, RenderError
from mailcli.transport import ConnectionLost, SmtpConnection


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
    dkim: DkimConfig | None = None  # from the SMTP profile


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


class _Prepared:
    def __init__(self, spec: OneOff, sender_fallback: str | None) -> None:
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
        sender_text = spec.sender or sender_fallback or os.environ.get("MAILCLI_FROM")
        if not sender_text:
            raise UsageError("no sender: give --from, MAILCLI_FROM, or `from` in the SMTP profile")
        try:
            self.sender = parse_mailbox(sender_text)
        except AddressError as exc:
            raise DataError(f"--from: {exc}") from None
        if spec.reply_to is not None:
            _mailboxes("--reply-to", (spec.reply_to,))
        self.to = _mailboxes("--to", spec.to)
        self.cc = _mailboxes("--cc", spec.cc)
        self.bcc = _mailboxes("--bcc", spec.bcc)
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
            attachments=tuple((str(p), p.resolve()) for p in spec.attachments),
        )
        images = parse_inline_images(spec.inline_images)
        signer = None
        if spec.dkim is not None:
            from mailcli.dkimsign import load_signer  # cryptography and dkimpy, only to sign

            signer = load_signer(spec.dkim)
        renderer = Renderer(content)
        try:
            self.rendered = renderer.render(parse_vars(spec.variables))
        except RenderError as exc:
            raise DataError(str(exc)) from None
        self.builder = MessageBuilder(
            self.sender,
            reply_to=spec.reply_to,
            list_id=spec.list_id,
            inline_images=images,
            signer=signer,
        )
        self.builder.preload([p.resolve() for p in spec.attachments])

    def build(self, smtputf8: bool) -> Built:
        try:
            return self.builder.build(
                self.rendered, self.to, cc=self.cc, bcc=self.bcc, smtputf8=smtputf8
            )
        except BuildError as exc:
            raise DataError(str(exc)) from None


def build_one_off(spec: OneOff, *, sender_fallback: str | None) -> Built:
    """Render and build the message without sending it (for --dry-run)."""
    return _Prepared(spec, sender_fallback).build(smtputf8=True)


def deliver_one_off(
    spec: OneOff, connection: SmtpConnection, *, sender_fallback: str | None
) -> dict[str, Any]:
    """Build and send the message in one transaction; return what the server said."""
    prepared = _Prepared(spec, sender_fallback)
    with connection:
        built = prepared.build(smtputf8="smtputf8" in connection.extensions)
        try:
            outcome = connection.send(built)
        except ConnectionLost as exc:
            if exc.handed_over:
                raise TempFailError(
                    f"the connection broke before the server confirmed {built.message_id}: "
                    f"{exc.reason}; it may or may not have been delivered"
                ) from None
            raise UnavailableError(f"the connection broke: {exc.reason}") from None
    refused = {addr: str(reply) for addr, reply in outcome.refused.items()}
    if outcome.delivered and not refused:
        code = ExitCode.OK
    elif outcome.reply.temporary or any(r.temporary for r in outcome.refused.values()):
        code = ExitCode.TEMPFAIL
    else:
        code = ExitCode.REJECTED
    return {
        "message_id": built.message_id,
        "mail_from": built.mail_from,
        "accepted": list(outcome.accepted) if outcome.delivered else [],
        "refused": refused,
        "reply": str(outcome.reply),
        "exit_code": int(code),
    }
