"""`batch --resend-failed`: recipients a server refused (5xx) in earlier runs are sent again once
the cause is fixed, and nobody else is. Real parts only: a real aiosmtpd server whose RCPT replies
are the fault, real SQLite and PostgreSQL state, the CLI run in-process through Typer."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, make_campaign, many_rows, server_args
from typer.testing import CliRunner

import mailcli
from mailcli import retry as policy
from mailcli.cli import app
from mailcli.delivery import DeliveryStatus
from mailcli.sandbox import SmtpServer
from mailcli.state import Entry

runner = CliRunner()

REFUSED = ("user00002@example.com", "user00005@example.com")
LOST = "user00004@example.com"  # handed over, no reply: `unknown`


class CountingReplies(dict[str, str]):
    """RCPT replies that count how often the server was asked about each address."""

    def __init__(self, replies: dict[str, str]) -> None:
        super().__init__(replies)
        self.asked: Counter[str] = Counter()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked[key] += 1
        return super().get(key, default)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_yaml(request: pytest.FixtureRequest) -> str:
    """The campaign's state: SQLite (the default), or PostgreSQL shared by hosts."""
    if request.param == "postgresql":
        return f'state: "{request.getfixturevalue("pg_url")}"\n'
    return ""


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def batch(campaign: Path, server: SmtpServer, *extra: str) -> dict[str, Any]:
    result = cli("batch", campaign, *server_args(server), "--json", *extra)
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["exit_code"] == result.exit_code, result.output
    return summary


def deliveries(recorder: Recorder) -> Counter[str]:
    return Counter(recorder.recipients())


def first_run(tmp_path: Path, server: SmtpServer, recorder: Recorder, state_yaml: str) -> Path:
    """Six recipients: two refused with 550, one left `unknown` (the server hangs up after
    taking its message), three sent."""
    recorder.rcpt_replies.update({a: "550 5.2.2 mailbox full" for a in REFUSED})
    hung: list[str] = []

    def once(env: Any) -> bool:
        if env.rcpt_tos == [LOST] and not hung:
            hung.append(LOST)
            return True
        return False

    recorder.hangup_after_data = once
    files = make_campaign(tmp_path / "camp", many_rows(6), extra=state_yaml)
    summary = batch(files.yaml, server)
    assert (summary["sent"], summary["failed"], summary["unknown"]) == (3, 2, 1)
    assert summary["exit_code"] == 75
    return files.yaml


def test_the_policy_resends_a_refusal_only_when_asked() -> None:
    """A server's refusal is due only with resend_failed; an invalid row (no code) always; a
    sent recipient never; an unknown one only with retry_unknown."""
    refused = Entry(DeliveryStatus.FAILED, 1, 1, 1, None, 550)
    invalid = Entry(DeliveryStatus.FAILED, 0, 1, 0, None, None)
    sent = Entry(DeliveryStatus.SENT, 1, 1, 1, None, 250)
    unknown = Entry(DeliveryStatus.UNKNOWN, 1, 1, 1, None, None)
    assert not policy.is_due(refused, False)
    assert policy.is_due(refused, False, resend_failed=True)
    assert policy.is_due(invalid, False) and policy.is_due(invalid, False, resend_failed=True)
    assert not policy.is_due(sent, True, resend_failed=True)
    assert not policy.is_due(unknown, False, resend_failed=True)
    assert policy.is_due(unknown, True)


def test_resend_failed_sends_exactly_the_refused_again_once(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """Without the flag a re-run leaves the refused alone; with it, after the fix, each refused
    recipient gets one message, counted as sent now (not as skipped or failed before); the
    sent are never resent and the unknown one waits for --retry-unknown."""
    campaign = first_run(tmp_path, smtp_server, recorder, state_yaml)
    recorder.rcpt_replies.clear()  # the operator had the mailboxes emptied

    plain = batch(campaign, smtp_server)
    assert (plain["sent"], plain["failed_before"], plain["exit_code"]) == (0, 2, 75)
    assert not set(REFUSED) & set(deliveries(recorder))

    resent = batch(campaign, smtp_server, "--resend-failed")
    assert (resent["sent"], resent["failed"], resent["failed_before"]) == (2, 0, 0)
    assert (resent["skipped"], resent["unknown"], resent["exit_code"]) == (4, 1, 75)
    counts = deliveries(recorder)
    assert {a: counts[a] for a in REFUSED} == dict.fromkeys(REFUSED, 1)
    assert LOST not in counts
    assert set(counts.values()) == {1} and len(recorder.messages) == 5

    # Nothing refused is left: a second --resend-failed sends nobody.
    again = batch(campaign, smtp_server, "--resend-failed")
    assert (again["sent"], again["skipped"], again["failed_before"]) == (0, 6, 0)
    done = batch(campaign, smtp_server, "--retry-unknown", "--resend-failed")
    assert (done["sent"], done["exit_code"]) == (1, 0)
    assert deliveries(recorder)[LOST] == 1 and set(deliveries(recorder).values()) == {1}
    status = json.loads(cli("status", campaign, "--json").stdout)
    assert (status["sent"], status["failed"], status["unknown"]) == (6, 0, 0)


def test_a_refusal_that_was_not_fixed_is_tried_once_and_counts_as_failed_now(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """Resent while the cause remains, each refused recipient is asked for once in the run,
    refused again, and counted under `failed` (exit 1), not `failed_before`."""
    campaign = first_run(tmp_path, smtp_server, recorder, state_yaml)
    replies = CountingReplies(dict(recorder.rcpt_replies))
    recorder.rcpt_replies = replies
    summary = batch(campaign, smtp_server, "--resend-failed", "--retry-unknown")
    assert (summary["sent"], summary["failed"], summary["failed_before"]) == (1, 2, 0)
    assert summary["exit_code"] == 1
    assert {a: replies.asked[a] for a in REFUSED} == dict.fromkeys(REFUSED, 1)
    assert {(f["email"], f["code"]) for f in summary["failures"]} == {(a, 550) for a in REFUSED}


def test_a_suppressed_refused_address_is_not_resent(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder, state_yaml: str
) -> None:
    """A hard bounce on the suppression list stays unsent with --resend-failed: counted as
    suppressed and still refused before (exit 1), until `mailcli suppress remove`."""
    campaign = first_run(tmp_path, smtp_server, recorder, state_yaml)
    recorder.rcpt_replies.clear()
    bounced = REFUSED[0]
    added = cli("suppress", "add", bounced, "--reason", "hard-bounce", "--campaign", campaign)
    assert added.exit_code == 0, added.output

    summary = batch(campaign, smtp_server, "--resend-failed")
    assert (summary["sent"], summary["suppressed"], summary["failed_before"]) == (1, 1, 1)
    assert (summary["skipped"], summary["exit_code"]) == (4, 75)
    assert bounced not in deliveries(recorder)
    assert deliveries(recorder)[REFUSED[1]] == 1
    failed = json.loads(cli("status", campaign, "--failed", "--json").stdout)
    assert [(r["email"], r["code"]) for r in failed["recipients"] if r["status"] == "failed"] == [
        (bounced, 550)
    ]

    assert cli("suppress", "remove", bounced, "--campaign", campaign).exit_code == 0
    after = batch(campaign, smtp_server, "--resend-failed", "--retry-unknown")
    assert (after["sent"], after["exit_code"]) == (2, 0)
    assert deliveries(recorder)[bounced] == 1 and set(deliveries(recorder).values()) == {1}


def test_send_campaign_takes_resend_failed(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The library's send_campaign(..., resend_failed=True) is the flag."""
    recorder.rcpt_replies["user00003@example.com"] = "550 5.7.1 relay not permitted"
    files = make_campaign(tmp_path / "camp", many_rows(4))
    mailer = mailcli.Mailer("127.0.0.1", smtp_server.port, "none", timeout=10)
    first = mailcli.send_campaign(files.yaml, mailer)
    assert (first.sent, first.failed, first.exit_code) == (3, 1, 1)
    recorder.rcpt_replies.clear()  # the relay policy was corrected
    assert mailcli.send_campaign(files.yaml, mailer).failed_before == 1
    again = mailcli.send_campaign(files.yaml, mailer, resend_failed=True)
    assert (again.sent, again.skipped, again.failed_before, again.exit_code) == (1, 3, 0, 0)
    assert deliveries(recorder)["user00003@example.com"] == 1


@pytest.mark.postgres
def test_a_refusal_another_run_got_after_this_one_started_is_not_resent(pg_url: str) -> None:
    """Two hosts resending at once: a recipient one of them resent (and got refused again)
    while the other was running is not resent by the other; a later run may resend it."""
    from mailcli.addresses import Mailbox
    from mailcli.pgstate import PgState
    from mailcli.recipients import Recipient
    from mailcli.state import Outcome

    rows = [Recipient(i, i + 1, Mailbox("", f"u{i}@example.com"), {}) for i in range(1, 4)]
    a, b = PgState.open(pg_url, "resend"), PgState.open(pg_url, "resend")
    try:
        a.import_rows(rows)
        b.start_run()
        a.start_run()
        claimed = a.claim(3, retry_unknown=False, retry_round=False, attempts=3)
        a.begin_flight((c.recipient.email, c.recipient.row, c.entry) for c in claimed)
        for c in claimed:
            a.record(Outcome(c.recipient.key, DeliveryStatus.FAILED, 550, "mailbox full"))
        a.flush()
        assert a.due(retry_unknown=False) == 0
        assert a.due(retry_unknown=False, resend_failed=True) == 3
        # Not by `a` (its own refusals) nor by `b` (refused after it started).
        assert (
            a.claim(3, retry_unknown=False, retry_round=False, attempts=3, resend_failed=True) == []
        )
        assert (
            b.claim(3, retry_unknown=False, retry_round=False, attempts=3, resend_failed=True) == []
        )
    finally:
        a.close()
        b.close()
    after = PgState.open(pg_url, "resend")
    try:
        after.start_run()
        later = after.claim(
            3, retry_unknown=False, retry_round=False, attempts=3, resend_failed=True
        )
        assert [x.recipient.email for x in later] == [r.email for r in rows]
        assert all(x.entry is not None and x.entry.rejected for x in later)
    finally:
        after.close()
