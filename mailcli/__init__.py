"""mailcli: mass mailing as a library, with a thin command line on top.

    import mailcli

    mailer = mailcli.Mailer(host="smtp.example.com", username="me")
    with mailer.connect() as conn:
        deliveries = conn.send_many(messages)

The names below are the public API (README, section "Library"). They are loaded on first use, so
`import mailcli` stays cheap for the command line. The core works without the CLI's dependencies
(Typer, Rich); `mailcli.cli` is only a shell over it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailcli.apiconf import ApiConfig as ApiConfig
    from mailcli.batch import dry_run as dry_run
    from mailcli.batch import send_campaign as send_campaign
    from mailcli.campaign import Campaign as Campaign
    from mailcli.campaign import load_campaign as load_campaign
    from mailcli.compose import Attachment as Attachment
    from mailcli.compose import Message as Message
    from mailcli.delivery import Delivery as Delivery
    from mailcli.delivery import DeliveryStatus as DeliveryStatus
    from mailcli.delivery import Refusal as Refusal
    from mailcli.delivery import Transport as Transport
    from mailcli.errors import AuthError as AuthError
    from mailcli.errors import BadHeaderError as BadHeaderError
    from mailcli.errors import ConfigError as ConfigError
    from mailcli.errors import DataError as DataError
    from mailcli.errors import MailcliError as MailcliError
    from mailcli.errors import TempFailError as TempFailError
    from mailcli.errors import UnavailableError as UnavailableError
    from mailcli.mailer import Connection as Connection
    from mailcli.mailer import Mailer as Mailer
    from mailcli.outbox import Outbox as Outbox
    from mailcli.outbox import SentMessage as SentMessage
    from mailcli.outbox import record_messages as record_messages
    from mailcli.sequence_status import SequencePlace as SequencePlace
    from mailcli.sequence_status import sequence_place as sequence_place
    from mailcli.status import RecipientHistory as RecipientHistory
    from mailcli.status import Status as Status
    from mailcli.status import StatusExport as StatusExport
    from mailcli.status import campaign_status as campaign_status
    from mailcli.status import export_status as export_status
    from mailcli.status import recipient_history as recipient_history
    from mailcli.summary import Failure as Failure
    from mailcli.summary import Summary as Summary
    from mailcli.suppression import SuppressionList as SuppressionList
    from mailcli.suppression import SuppressionReason as SuppressionReason
    from mailcli.suppression import suppression_list as suppression_list

# Each public name and the module that defines it.
_EXPORTS = {
    "Message": "mailcli.compose",
    "ApiConfig": "mailcli.apiconf",
    "Attachment": "mailcli.compose",
    "Mailer": "mailcli.mailer",
    "Connection": "mailcli.mailer",
    "Delivery": "mailcli.delivery",
    "DeliveryStatus": "mailcli.delivery",
    "Refusal": "mailcli.delivery",
    "Transport": "mailcli.delivery",
    "record_messages": "mailcli.outbox",
    "Outbox": "mailcli.outbox",
    "SentMessage": "mailcli.outbox",
    "Campaign": "mailcli.campaign",
    "load_campaign": "mailcli.campaign",
    "dry_run": "mailcli.batch",
    "send_campaign": "mailcli.batch",
    "Summary": "mailcli.summary",
    "Failure": "mailcli.summary",
    "campaign_status": "mailcli.status",
    "Status": "mailcli.status",
    "export_status": "mailcli.status",
    "StatusExport": "mailcli.status",
    "recipient_history": "mailcli.status",
    "RecipientHistory": "mailcli.status",
    "sequence_place": "mailcli.sequence_status",
    "SequencePlace": "mailcli.sequence_status",
    "MailcliError": "mailcli.errors",
    "BadHeaderError": "mailcli.errors",
    "ConfigError": "mailcli.errors",
    "UnavailableError": "mailcli.errors",
    "AuthError": "mailcli.errors",
    "DataError": "mailcli.errors",
    "TempFailError": "mailcli.errors",
    "SuppressionList": "mailcli.suppression",
    "SuppressionReason": "mailcli.suppression",
    "suppression_list": "mailcli.suppression",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    # The version is read from the installed metadata only when asked for: importlib.metadata
    # costs tens of milliseconds at every start.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mailcli")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0.0.0+unknown"
    raise AttributeError(f"module 'mailcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
