"""A finished message ready for a transport: its bytes, its Message-ID and its SMTP envelope.

A leaf module: the builder makes these and every transport takes them, so neither has to import
the other.
"""

from __future__ import annotations

from typing import NamedTuple

from mailcli.errors import BadHeaderError


class Built(NamedTuple):
    """A finished message: its bytes, Message-ID and SMTP envelope."""

    data: bytes
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool = False
    # The library's Message it was built from, if any (the outbox hands it back).
    source: object = None


def check_envelope(message: Built) -> None:
    """Raise BadHeaderError when an envelope address holds a line break.

    SMTP commands are written straight to the socket (pipelined, several in one write): a CR or
    LF in an address would end the command and start another one of the sender's choosing.
    Checked for every message before the first byte of a write.
    """
    for address in (message.mail_from, *message.rcpt_to):
        if "\r" in address or "\n" in address:
            raise BadHeaderError(
                f"the address {address!r} contains a line break (header injection?)",
                recipient=address,
            )
