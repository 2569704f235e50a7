"""A finished message ready for a transport: its bytes, its Message-ID and its SMTP envelope.

A leaf module: the builder makes these and every transport takes them, so neither has to import
the other.
"""

from __future__ import annotations

from typing import NamedTuple


class Built(NamedTuple):
    """A finished message: its bytes, Message-ID and SMTP envelope."""

    data: bytes
    message_id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    smtputf8: bool = False
