"""Email address validation and normalisation (email-validator, no DNS lookups)."""

from __future__ import annotations

import email.utils
import functools
import re
from types import ModuleType
from typing import NamedTuple


class AddressError(ValueError):
    """An address that cannot be sent to."""


class Mailbox(NamedTuple):
    """A display name and a validated, normalised addr-spec."""

    name: str
    addr: str

    @property
    def domain(self) -> str:
        """The domain part, as written (may be internationalised)."""
        return self.addr.rpartition("@")[2]

    @property
    def key(self) -> str:
        """The identity used to send each address once: case-insensitive, as listmonk does."""
        return address_key(self.addr)

    def __str__(self) -> str:
        return format_mailbox(self.name, self.addr)


def format_mailbox(name: str, addr: str) -> str:
    """`Name <addr>` as text (not encoded: the builder encodes headers), the name quoted where
    it holds a special character; the bare address when there is no name.

    Not `email.utils.formataddr`: it writes a non-ASCII name as an RFC 2047 encoded word, which
    the builder would then encode a second time.
    """
    if not name:
        return addr
    if any(c in name for c in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def address_key(addr: str) -> str:
    """Normalised identity of an address: two spellings of one mailbox give one key."""
    return addr.casefold()


# The everyday address (ASCII, dot-atom local part, LDH labels, alphabetic TLD) checked by a
# regular expression in about a microsecond; anything else goes to email-validator (~30 us).
# It accepts only what email-validator accepts and normalises the same way (a property test).
_PLAIN = re.compile(
    r"(?=[^@]{1,64}@)[A-Za-z0-9_%+'-]+(?:\.[A-Za-z0-9_%+'-]+)*"
    r"@(?=.{4,253}$)(?:(?!-)(?!..--)[A-Za-z0-9-]{1,63}(?<!-)\.)+[A-Za-z]{2,63}"
)


@functools.cache
def _validator() -> ModuleType:
    """email-validator, imported on first use (its tables take 25 ms to build)."""
    import email_validator

    return email_validator


# A superset of email-validator's special-use names (RFC 6761 and later): an address under one
# of them is handed to email-validator, which decides and says why.
_DEFER_TLDS = frozenset(
    {"arpa", "invalid", "local", "localhost", "onion", "test", "alt", "internal", "example"}
)


def _plain(text: str) -> str | None:
    """The normalised form of an everyday address, or None to ask email-validator."""
    if len(text) > 254 or not _PLAIN.fullmatch(text):
        return None
    local, _, domain = text.rpartition("@")
    domain = domain.lower()
    labels = domain.split(".")
    if any(label.startswith("xn--") for label in labels):
        return None  # punycode: let email-validator check the IDNA
    if labels[-1] in _DEFER_TLDS:
        return None  # e.g. .test, .local, .invalid: email-validator decides and says why
    return f"{local}@{domain}"


def normalize_address(addr: str) -> str:
    """Validate a bare addr-spec and return its normalised form; raise AddressError."""
    text = addr.strip()
    if not text:
        raise AddressError("empty address")
    if any(c in text for c in "\r\n\0"):
        raise AddressError(f"address {text!r} contains a control character")
    quick = _plain(text)
    if quick is not None:
        return quick
    try:
        return str(_validator().validate_email(text, check_deliverability=False).normalized)
    except _validator().EmailNotValidError as exc:
        raise AddressError(f"invalid address {text!r}: {exc}") from None


def parse_mailbox(text: str) -> Mailbox:
    """Parse `Name <addr>` or a bare address into a Mailbox; raise AddressError."""
    if any(c in text for c in "\r\n\0"):
        raise AddressError("address contains a line break or control character")
    parsed = email.utils.getaddresses([text])
    if len(parsed) != 1 or not parsed[0][1]:
        raise AddressError(f"expected one address like 'Name <user@example.com>', got {text!r}")
    name, addr = parsed[0]
    return Mailbox(name=name.strip(), addr=normalize_address(addr))
