"""Sending a campaign from Python, as a web application would (a button, a background job).

mailcli is a library with a command line on top: everything `mailcli batch` does is a call
away (`mailcli.send_campaign`), with the same guarantees: validation before connecting, one
connection, progress saved so that a crashed job resumes without sending anyone twice.

Run it as it is to send the sample campaign to a local capture server (nothing leaves the
machine; the .eml files land in ./outbox):

    python examples/library/send_from_code.py

In an application, build the Mailer from your settings, with a function that returns the
password from your secret store (never from the campaign file).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mailcli

SAMPLE = Path(__file__).resolve().parents[2] / "campaigns" / "welcome" / "campaign.yaml"


def send_campaign(
    campaign_file: Path,
    mailer: mailcli.Mailer,
    *,
    on_progress: Callable[[mailcli.Summary], None] | None = None,
    state_file: Path | None = None,
) -> mailcli.Summary:
    """Send every due recipient of a campaign; return the counts (see `Summary.to_json()`).

    Problems with the data (an invalid row, a template error) come back in the summary with
    exit code 65 and nothing sent; a server that cannot be reached raises
    `mailcli.UnavailableError`; a refused login raises `mailcli.AuthError`.
    """
    campaign = mailcli.load_campaign(campaign_file)
    if state_file is not None:  # e.g. one state per tenant of the application
        campaign = replace(campaign, state_path=state_file)
    return mailcli.send_campaign(campaign, mailer, progress=on_progress)


def main() -> int:
    seen: list[int] = []
    # sandbox=: an embedded capture server saves .eml files there, and the progress is kept
    # there too, so a trial never marks the real recipients as sent.
    summary = mailcli.send_campaign(
        SAMPLE, sandbox="outbox", progress=lambda s: seen.append(s.sent)
    )
    print(json.dumps(summary.to_json(), indent=2))
    print(
        f"{len(seen)} progress reports, the last at {seen[-1]} sent; .eml files in outbox/",
        file=sys.stderr,
    )
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
