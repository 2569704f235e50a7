"""Address validation: the regular-expression fast path never disagrees with email-validator."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailcli.addresses import AddressError, _plain, normalize_address, parse_mailbox

LOCAL_CHARS = "abcXYZ019_%+'-."
label = st.text(alphabet="abcxyz019-", min_size=1, max_size=12)
tld = st.text(alphabet="abcdeXYZ0", min_size=1, max_size=6)
address = st.builds(
    lambda local, labels, top: f"{local}@{'.'.join([*labels, top])}",
    st.text(alphabet=LOCAL_CHARS, min_size=1, max_size=20),
    st.lists(label, min_size=1, max_size=3),
    tld,
)


def reference(text: str) -> str | None:
    try:
        return str(validate_email(text, check_deliverability=False).normalized)
    except EmailNotValidError:
        return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(address)
@example("Bob.Smith@Example.COM")
@example("a@x--y.com")
@example("a@xn--bcher-kva.example")
@example("a@host.test")
def test_fast_path_agrees_with_email_validator(text: str) -> None:
    """Whatever the fast path accepts, email-validator accepts and normalises the same way."""
    fast = _plain(text)
    if fast is not None:
        assert reference(text) == fast


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fast_path_on_arbitrary_text(text: str) -> None:
    """On any text at all, the fast path either defers or agrees with email-validator."""
    fast = _plain(text)
    if fast is not None:
        assert reference(text) == fast


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("Ann@Example.COM", "Ann@example.com"),
        ("o'brien@example.co.uk", "o'brien@example.co.uk"),
        ("jörg@bücher.example", "jörg@bücher.example"),
        (" spaced@example.com ", "spaced@example.com"),
    ],
)
def test_normalize_address(text: str, normalised: str) -> None:
    """Domains are lower-cased, internationalised ones kept in Unicode, spaces trimmed."""
    assert normalize_address(text) == normalised


@pytest.mark.parametrize(
    "text", ["", "a", "a@", "@b.com", "a@b", "a@host.test", "a b@c.com", "a@b.com\nBcc: x@y.com"]
)
def test_invalid_addresses(text: str) -> None:
    """Malformed, special-use and injected addresses are refused with a reason."""
    with pytest.raises(AddressError):
        normalize_address(text)


def test_parse_mailbox_keeps_the_display_name() -> None:
    """`Name <addr>` keeps the name; more than one address is refused."""
    box = parse_mailbox("Ann Lee <Ann@Example.com>")
    assert (box.name, box.addr, str(box)) == (
        "Ann Lee",
        "Ann@example.com",
        "Ann Lee <Ann@example.com>",
    )
    with pytest.raises(AddressError):
        parse_mailbox("a@example.com, b@example.com")


def test_deferred_tlds_cover_email_validators_special_use_names() -> None:
    """Every special-use name email-validator refuses is one the fast path hands to it."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    from mailcli.addresses import _DEFER_TLDS

    assert {name.rsplit(".", 1)[-1] for name in SPECIAL_USE_DOMAIN_NAMES} <= _DEFER_TLDS
