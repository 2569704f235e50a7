"""Deliverability warnings about a campaign: settings that work but that receivers penalise.

Each warning is one line of text; none stops a run. The checks read the campaign only (no DNS,
no network), so `preview` and a dry run can show them before anything is sent.
"""

from __future__ import annotations

from mailcli.addresses import AddressError, parse_mailbox
from mailcli.campaign import Campaign


def campaign_warnings(campaign: Campaign, sender: str | None = None) -> list[str]:
    """One-line warnings for a campaign; `sender` overrides its `from` (as a profile's does)."""
    warnings: list[str] = []
    from_text = sender or campaign.sender
    if campaign.dkim_keys and from_text is not None:
        try:
            from_domain = parse_mailbox(from_text).domain
        except AddressError:
            from_domain = None  # building the messages reports a bad sender, with its reason
        # Every key is checked: an Ed25519 signature that does not align helps no receiver.
        for key in campaign.dkim_keys:
            if from_domain is not None and not dkim_aligned(key.domain, from_domain):
                warnings.append(
                    f"dkim.domain {key.domain} does not align with the From domain "
                    f"{from_domain}: unless both are under one registered domain, DMARC fails "
                    "and receivers that enforce it refuse or junk these messages"
                )
    one_click = campaign.unsubscribe is not None or campaign.unsubscribe_endpoint is not None
    if campaign.unsubscribe_mailto is not None and not one_click:
        warnings.append(
            "unsubscribe has only a mailto: Gmail and Yahoo require one-click unsubscribe "
            "(RFC 8058), which needs an https URL; add unsubscribe.endpoint (mailcli's own) "
            "or unsubscribe.url"
        )
    endpoint = campaign.unsubscribe_endpoint
    if endpoint is not None and not endpoint.startswith("https://"):
        warnings.append(
            f"unsubscribe.endpoint {endpoint} is plain http on this machine: fine for "
            "development and tests, but no recipient can reach it; use https for real mail"
        )
    return warnings


def dkim_aligned(dkim_domain: str, from_domain: str) -> bool:
    """True if a DKIM signature for `dkim_domain` aligns with the From domain (relaxed mode).

    DMARC's relaxed alignment (RFC 7489 3.1.1) asks for the same organizational domain. Without
    the public suffix list that is decided where it is certain: the same domain, or one a
    subdomain of the other (news.acme.example and acme.example share theirs).
    """
    d, f = _normal(dkim_domain), _normal(from_domain)
    return d == f or f.endswith("." + d) or d.endswith("." + f)


def _normal(domain: str) -> str:
    """A domain in the form DNS compares: lower case, IDNA, without a final dot."""
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain  # compared as written: no message can be sent from or to such a domain
