"""Sending a campaign from Python, as a web application would (a button, a background job).

mailcli is a library with a command line on top: everything `mailcli batch` does is a call
away, with the same guarantees (validation before connecting, one connection, progress saved
so that a crashed job resumes without sending anyone a message twice).

Run it as it is to send the sample campaign to a local capture server (nothing leaves the
machine; the .eml files land in ./outbox):

    python examples/library/send_from_code.py

In an application, call `send_campaign()` from the background job, with the SMTP settings and
a function that returns the password (from your secret store; never from the campaign file).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from mailcli.batch import Summary, send_batch
from mailcli.campaign import load_campaign
from mailcli.transport import SmtpConnection, SmtpSettings

SAMPLE = Path(__file__).resolve().parents[2] / "campaigns" / "welcome" / "campaign.yaml"


def send_campaign(
    campaign_file: Path,
    settings: SmtpSettings,
    *,
    password: Callable[[], str] | None = None,
    on_progress: Callable[[Summary], None] | None = None,
    state_file: Path | None = None,
) -> Summary:
    """Send every due recipient of a campaign; return the counts (see `Summary.to_json()`).

    Problems with the data (an invalid row, a template error) come back in the summary with
    exit code 65 and nothing sent; a server that cannot be reached raises
    `mailcli.errors.UnavailableError`; a refused login raises `AuthError`.
    """
    campaign = load_campaign(campaign_file)
    if state_file is not None:  # e.g. one state per tenant of the application
        from dataclasses import replace

        campaign = replace(campaign, state_path=state_file)
    return send_batch(
        campaign,
        lambda: SmtpConnection(settings, password=password),
        progress=on_progress,
    )


def main() -> int:
    from mailcli.sandbox import sandbox

    outbox = Path("outbox")
    seen: list[int] = []
    with sandbox(outbox) as (server, _writer):
        settings = SmtpSettings(host=server.host, port=server.port, security="none")
        summary = send_campaign(
            SAMPLE,
            settings,
            on_progress=lambda s: seen.append(s.sent),
            state_file=outbox / ".mailcli" / "welcome.sqlite",
        )
    print(json.dumps(summary.to_json(), indent=2))
    print(
        f"{len(seen)} progress reports, the last at {seen[-1]} sent; .eml files in {outbox}/",
        file=sys.stderr,
    )
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
