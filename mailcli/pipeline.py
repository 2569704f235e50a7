"""The per-recipient pipeline shared by preview, dry-run and batch: row -> render -> build.

Each row of the list comes out as exactly one `Item`: a message ready to build, a duplicate of an
earlier row, or a problem. The list is streamed; the only state kept is the on-disk set of addresses
already met.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from mailcli.addresses import AddressError, Mailbox, parse_mailbox
from mailcli.campaign import Campaign
from mailcli.envelope import Built
from mailcli.errors import ConfigError
from mailcli.message import BuildError, MessageBuilder
from mailcli.recipients import Recipient, RecipientReader, RowProblem, SeenAddresses
from mailcli.render import Content, Rendered, Renderer, RenderError
from mailcli.sequence import Step
from mailcli.unsubscribe import campaign_signer

if TYPE_CHECKING:
    from mailcli.dkimsign import DkimSigner


class Ready(NamedTuple):
    """A valid, first-seen recipient and its rendered parts."""

    recipient: Recipient
    rendered: Rendered


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A row whose address appeared on an earlier row; it is not sent again."""

    row: int
    email: str
    first_row: int


Item = Ready | Duplicate | RowProblem


def campaign_content(campaign: Campaign, step: Step | None = None) -> Content:
    """The templates of a campaign (or of one step of a sequence: what the step does not set
    comes from the campaign; its bodies, when it has any, replace all three of the
    campaign's), in the form the renderer takes."""
    bodies = step if step is not None and step.sets_body else campaign
    attachments = campaign.attachments
    if step is not None and step.attachments is not None:
        attachments = step.attachments
    headers = campaign.headers
    if step is not None and step.headers is not None:
        headers = step.headers
    return Content(
        folder=campaign.folder,
        subject=step.subject if step is not None and step.subject else campaign.subject,
        text=bodies.text,
        html=bodies.html,
        markdown=bodies.markdown,
        headers=headers,
        unsubscribe=campaign.unsubscribe,
        unsubscribe_mailto=campaign.unsubscribe_mailto,
        attachments=tuple((a.source, a.path) for a in attachments),
        inline_css=campaign.inline_css,
    )


# What a Ready carries when rendering is left to a later step (one object for every row).
UNRENDERED = Rendered(subject="", text=None, html=None)


def _signer(campaign: Campaign) -> DkimSigner | None:
    if not campaign.dkim_keys:
        return None
    from mailcli.dkimsign import load_signer  # cryptography and dkimpy, only to sign

    return load_signer(campaign.dkim_keys)


def row_context(campaign: Campaign, recipient: Recipient) -> dict[str, Any]:
    """The variables of one row: `row` (its columns), `vars`, then the columns by name, then
    `email` (what a sequence's `start`, `timezone` and `if:` see, and the templates too)."""
    return {
        "row": recipient.fields,
        **campaign.vars,
        **recipient.fields,
        "email": recipient.email,
    }


class Pipeline:
    """Turns a campaign's rows into rendered and built messages."""

    def __init__(self, campaign: Campaign, *, sender: str | None = None) -> None:
        self.campaign = campaign
        text = sender or campaign.sender
        if text is None:
            raise ConfigError(
                "no sender: set 'from' in the campaign file or in the SMTP profile",
                path=campaign.path,
            )
        try:
            self.sender: Mailbox = parse_mailbox(text)
        except AddressError as exc:
            raise ConfigError(f"'from': {exc}", path=campaign.path) from None
        if campaign.steps:
            # One renderer per step of a sequence (the first is also `renderer`).
            self.renderers = {
                s.name: Renderer(campaign_content(campaign, s)) for s in campaign.steps
            }
            self.renderer = self.renderers[campaign.steps[0].name]
        else:
            self.renderer = Renderer(campaign_content(campaign))
            self.renderers = {}
        # `unsubscribe: {endpoint: ...}`: the secret is resolved here, once per run and before
        # any connection (a missing one is exit 78); each row gets its own signed URL.
        self.unsubscribe_signer = campaign_signer(campaign)
        self.builder = MessageBuilder(
            self.sender,
            reply_to=campaign.reply_to,
            list_id=campaign.list_id,
            inline_images=dict(campaign.inline_images),
            signer=_signer(campaign),
        )
        attachments = [*campaign.attachments]
        for step in campaign.steps:
            attachments.extend(step.attachments or ())
        self.builder.preload([a.path for a in attachments if a.path is not None])
        self.reader = RecipientReader(campaign.recipients)

    def context(self, recipient: Recipient) -> dict[str, Any]:
        """Template variables for one row: `vars`, then the row's columns, then `email`, then
        `unsubscribe_url` when the campaign has an unsubscribe endpoint."""
        context = row_context(self.campaign, recipient)
        if self.unsubscribe_signer is not None and self.campaign.unsubscribe_endpoint:
            # Last, so the visible link is always the signed URL of the header.
            context["unsubscribe_url"] = self.unsubscribe_signer.url(
                self.campaign.unsubscribe_endpoint, self.campaign.name, recipient.email
            )
        return context

    def render(self, recipient: Recipient, step: str | None = None) -> Rendered:
        """Render one row's message, or one step's of a sequence (raises RenderError)."""
        context = self.context(recipient)
        renderer = self.renderers[step] if step is not None else self.renderer
        rendered = renderer.render(context)
        if self.unsubscribe_signer is None:
            return rendered
        return rendered._replace(unsubscribe=context["unsubscribe_url"])

    def build(self, ready: Ready, *, smtputf8: bool = True) -> Built:
        """Build one recipient's message bytes (raises BuildError)."""
        return self.builder.build(ready.rendered, [ready.recipient.mailbox], smtputf8=smtputf8)

    def items(self, *, render: bool = True) -> Iterator[Item]:
        """Every row of the list, in order, as a Ready, Duplicate or RowProblem."""
        with SeenAddresses() as seen:
            for entry in self.reader:
                if isinstance(entry, RowProblem):
                    yield entry
                    continue
                first = seen.add(entry.email, entry.row)
                if first is not None:
                    yield Duplicate(entry.row, entry.email, first)
                    continue
                if not render:
                    yield Ready(entry, UNRENDERED)
                    continue
                try:
                    yield Ready(entry, self.render(entry))
                except RenderError as exc:
                    yield RowProblem(entry.row, entry.line, str(exc), entry.email)

    def check_recipient(self, recipient: Recipient, step: str | None = None) -> Built | RowProblem:
        """Render and build one row (as a dry run does), any per-row failure as a RowProblem."""
        try:
            rendered = self.render(recipient, step)
        except RenderError as exc:
            return RowProblem(recipient.row, recipient.line, str(exc), recipient.email)
        return self.check(Ready(recipient, rendered))

    def check(self, ready: Ready, *, smtputf8: bool = True) -> Built | RowProblem:
        """Build a message, turning a per-row build failure into a RowProblem."""
        try:
            return self.build(ready, smtputf8=smtputf8)
        except BuildError as exc:
            r = ready.recipient
            return RowProblem(r.row, r.line, str(exc), r.email)
