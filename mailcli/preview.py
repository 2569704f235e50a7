"""Previews: one recipient's message as it will be sent, or files for every recipient."""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from mailcli.addresses import AddressError, normalize_address
from mailcli.campaign import Campaign
from mailcli.envelope import Built
from mailcli.errors import DataError, UsageError
from mailcli.pipeline import Pipeline, Ready
from mailcli.recipients import Recipient, RowProblem
from mailcli.render import RenderError


@dataclass(frozen=True, slots=True)
class Preview:
    """One built message and the row it came from."""

    row: int
    email: str
    built: Built
    step: str | None = None  # the step of a sequence (None: a one-message campaign)

    @property
    def parsed(self) -> EmailMessage:
        """The message read back with the stdlib parser, as a mail client would."""
        message = BytesParser(policy=email.policy.default).parsebytes(self.built.data)
        assert isinstance(message, EmailMessage)
        return message

    def text(self) -> str | None:
        """The decoded text/plain part, if any."""
        return _body(self.parsed, "plain")

    def html(self) -> str | None:
        """The decoded text/html part, if any."""
        return _body(self.parsed, "html")

    def attachments(self) -> list[tuple[str, str, int]]:
        """(filename, content type, size) of each attachment."""
        return [
            (
                part.get_filename() or "",
                part.get_content_type(),
                len(part.get_payload(decode=True) or b""),
            )
            for part in self.parsed.iter_attachments()
        ]

    def to_json(self) -> dict[str, Any]:
        """A machine-readable description of the message."""
        parsed = self.parsed
        return {
            "row": self.row,
            "email": self.email,
            **({"step": self.step} if self.step is not None else {}),
            "message_id": self.built.message_id,
            "size": len(self.built.data),
            "envelope": {"mail_from": self.built.mail_from, "rcpt_to": list(self.built.rcpt_to)},
            "headers": {k: str(v) for k, v in parsed.items()},
            "text": self.text(),
            "html": self.html(),
            "attachments": [
                {"filename": n, "content_type": t, "size": s} for n, t, s in self.attachments()
            ],
        }


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    content = part.get_content()
    return content if isinstance(content, str) else None


def find_recipient(
    pipeline: Pipeline, *, row: int | None = None, to: str | None = None
) -> Recipient:
    """The row to preview: by data row number, by address, or the first valid row."""
    wanted = None
    if to is not None:
        try:
            wanted = normalize_address(to).casefold()
        except AddressError as exc:
            raise UsageError(f"--to: {exc}") from None
    if row is not None and row < 1:
        raise UsageError("--row counts data rows from 1")
    for entry in pipeline.reader:
        if row is not None and entry.row != row:
            continue
        if isinstance(entry, RowProblem):
            if row is not None:
                raise DataError(str(entry), path=pipeline.campaign.recipients.path)
            continue
        if wanted is not None and entry.email.casefold() != wanted:
            continue
        return entry
    path = pipeline.campaign.recipients.path
    if row is not None:
        raise UsageError(f"there is no data row {row} in {path}")
    if wanted is not None:
        raise UsageError(f"no row of {path} has the address {to}")
    raise DataError("the recipient list has no valid row", path=path)


def preview_one(
    campaign: Campaign,
    *,
    row: int | None = None,
    to: str | None = None,
    sender: str | None = None,
    step: str | None = None,
) -> Preview:
    """Render and build one recipient's message exactly as `batch` would (of a sequence: the
    message of `step`, by default its first step's)."""
    if step is not None and not campaign.is_sequence:
        raise UsageError("--step is for a sequence (a campaign with steps:)")
    if campaign.is_sequence:
        names = [s.name for s in campaign.steps]
        if step is None:
            step = names[0]
        elif step not in names:
            raise UsageError(f"the campaign has no step {step!r}: its steps are {', '.join(names)}")
    pipeline = Pipeline(campaign, sender=sender)
    recipient = find_recipient(pipeline, row=row, to=to)
    where = f"row {recipient.row}" + (f", step {step!r}" if step is not None else "")
    try:
        ready = Ready(recipient, pipeline.render(recipient, step))
    except RenderError as exc:
        raise DataError(f"{where}: {exc}", path=campaign.recipients.path) from None
    built = pipeline.check(ready)
    if isinstance(built, RowProblem):
        raise DataError(f"{where}: {built.problem}", path=campaign.recipients.path)
    return Preview(recipient.row, recipient.email, built, step)


def write_files(preview: Preview, folder: Path) -> list[Path]:
    """Write `<row>-<address>.eml` (and `.html` for the HTML part) into a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{preview.row:06d}-{re.sub(r'[^A-Za-z0-9@._+-]', '_', preview.email)[:80]}"
    if preview.step is not None:
        stem += f"-{preview.step}"
    eml = folder / f"{stem}.eml"
    eml.write_bytes(preview.built.data)
    written = [eml]
    html = preview.html()
    if html is not None:
        # Inline images are written beside the page and the page points at them, so a browser
        # shows the message as a mail client will (with its CSS already inlined, if asked).
        for part in preview.parsed.walk():
            cid = part.get("Content-ID")
            if cid is None or part.get_content_maintype() == "multipart":
                continue
            name = cid.strip().strip("<>")
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            suffix = Path(part.get_filename() or "").suffix
            image = folder / f"{stem}-{safe}{suffix}"
            payload = part.get_payload(decode=True)
            image.write_bytes(payload if isinstance(payload, bytes) else b"")
            written.append(image)
            html = html.replace(f"cid:{name}", image.name)
        page = folder / f"{stem}.html"
        page.write_text(html, encoding="utf-8")
        written.append(page)
    return written
