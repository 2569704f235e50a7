"""HTTP API providers end to end: campaigns, `send`, test-connection and the library over
Postmark, Resend, SendGrid and Mailgun, each played by a local server that implements the
provider's documented requests and answers (tests/apiservers.py cites the reference pages) and
injects faults on the server side: 429 with Retry-After, 5xx, per-message refusals, a hang after
taking the messages, a refused token. Nothing here is mocked on the client side: httpx talks to a
real HTTP server over loopback.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from apiservers import (
    SERVERS,
    TOKEN_ENV,
    Fault,
    MailgunServer,
    PostmarkServer,
    ProviderServer,
    Reply,
    ResendServer,
    SendGridServer,
)
from conftest import make_campaign, many_rows, server_args
from typer.testing import CliRunner

import mailcli
from mailcli.apiconf import ApiConfig
from mailcli.cli import app
from mailcli.delivery import DeliveryStatus
from mailcli.errors import AuthError, ConfigError
from mailcli.httpapi import ApiTransport, retry_after

runner = CliRunner()
SENDER = "Acme News <news@acme.example>"


def start(kind: type[ProviderServer]) -> Iterator[Any]:
    server = kind().start()
    yield server
    server.stop()
    assert not server.errors, server.errors


@pytest.fixture
def postmark() -> Iterator[PostmarkServer]:
    yield from start(PostmarkServer)


@pytest.fixture
def resend() -> Iterator[ResendServer]:
    yield from start(ResendServer)


@pytest.fixture
def sendgrid() -> Iterator[SendGridServer]:
    yield from start(SendGridServer)


@pytest.fixture
def mailgun() -> Iterator[MailgunServer]:
    yield from start(MailgunServer)


@pytest.fixture(params=sorted(SERVERS))
def provider(request: pytest.FixtureRequest) -> Iterator[ProviderServer]:
    yield from start(SERVERS[request.param])


def name_of(server: ProviderServer) -> str:
    return type(server).__name__.removesuffix("Server").lower()


def api_yaml(server: ProviderServer, **options: object) -> str:
    """The `api:` mapping that points a campaign at a local provider server."""
    name = name_of(server)
    keys = {"provider": name, "base_url": server.url, **options}
    if name == "mailgun":
        keys.setdefault("domain", "mg.acme.example")
    body = ", ".join(
        f"{k}: {json.dumps(v) if not isinstance(v, dict) else v}" for k, v in keys.items()
    )
    return f"api: {{{body}}}\n"


def with_token(server: ProviderServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV[name_of(server)], server.token)


def run(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def run_process(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command in its own process, as cron runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mailcli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


# -- must show 1: batches of the documented size, each recipient once, the token in its header


def test_postmark_1200_recipients_in_three_batch_calls(
    tmp_path: Path, postmark: PostmarkServer
) -> None:
    """1,200 recipients: /email/batch calls of 500, 500 and 200; each recipient once; the token
    only in the X-Postmark-Server-Token header, never in a body nor in mailcli's output, even
    with --debug and a log file."""
    files = make_campaign(
        tmp_path / "c", many_rows(1200), extra=api_yaml(postmark, stream="broadcast")
    )
    log = tmp_path / "run.log"
    result = run_process(
        "batch",
        files.yaml,
        "--json",
        "--debug",
        "--log-file",
        log,
        env={"POSTMARK_SERVER_TOKEN": postmark.token},
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["transport"], summary["requests"]) == (1200, "postmark", 3)
    assert summary["connections"] == 1
    calls = postmark.sends()
    assert [r.path for r in calls] == ["/email/batch"] * 3
    assert [len(r.json()) for r in calls] == [500, 500, 200]
    assert sorted(postmark.recipients()) == sorted(r["email"] for r in many_rows(1200))
    assert all(r.headers["x-postmark-server-token"] == postmark.token for r in calls)
    assert all(m["MessageStream"] == "broadcast" for r in calls for m in r.json())
    for text in (result.stdout, result.stderr, log.read_text(encoding="utf-8")):
        assert postmark.token not in text
    assert not any(postmark.token.encode() in r.body for r in calls)
    assert "POST http://127.0.0.1" in result.stderr  # the --debug transcript is there


def test_resend_calls_of_at_most_100_with_idempotency_keys(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same 1,200 via Resend: 12 calls of 100 to /emails/batch, each with its own
    Idempotency-Key, each recipient once."""
    with_token(resend, monkeypatch)
    files = make_campaign(tmp_path / "c", many_rows(1200), extra=api_yaml(resend))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["requests"] == 12
    calls = resend.sends()
    assert [len(r.json()) for r in calls] == [100] * 12
    keys = [r.headers["idempotency-key"] for r in calls]
    assert len(set(keys)) == 12 and all(keys)
    assert sorted(resend.recipients()) == sorted(r["email"] for r in many_rows(1200))


def test_one_message_apis_use_one_kept_alive_connection(
    tmp_path: Path, provider: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every provider: 40 recipients, each once, over one HTTP connection (keep-alive)."""
    with_token(provider, monkeypatch)
    files = make_campaign(tmp_path / "c", many_rows(40), extra=api_yaml(provider))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sent"] == 40 and summary["connections"] == 1
    assert provider.connections == 1
    assert sorted(provider.recipients()) == sorted(r["email"] for r in many_rows(40))
    batch = {"postmark": 1, "resend": 1, "sendgrid": 40, "mailgun": 40}[name_of(provider)]
    assert summary["requests"] == len(provider.sends()) == batch


# -- must show 2: refusals, 429, a hang after accepting -----------------------------------------


def test_postmark_refusals_end_failed_with_the_providers_code(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ErrorCode 406 (inactive) and 300 (invalid) per message: those two `failed` with the code
    and text, the rest sent, exit 1; `status --failed` shows the code; a re-run sends nobody."""
    with_token(postmark, monkeypatch)
    rows = many_rows(10)
    postmark.refuse = {
        "user00003@example.com": (
            406,
            "You tried to send to a recipient that has been marked as inactive.",
        ),
        "user00007@example.com": (300, "Invalid email request"),
    }
    files = make_campaign(tmp_path / "c", rows, extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["failed"]) == (8, 2)
    failures = {f["email"]: f for f in summary["failures"]}
    assert failures["user00003@example.com"]["code"] == 406
    assert "inactive" in failures["user00003@example.com"]["reply"]
    status = run("status", files.yaml, "--failed", "--json")
    listed = {r["email"]: r for r in json.loads(status.stdout)["recipients"]}
    assert listed["user00007@example.com"]["code"] == 300
    assert listed["user00007@example.com"]["reply"] == "Postmark: Invalid email request"
    again = run("batch", files.yaml, "--json")
    assert again.exit_code == 1
    assert len(postmark.sends()) == 1  # nothing due: the provider is not called at all


def test_429_is_retried_after_retry_after_and_everything_is_sent_once(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with Retry-After: 1: the same call again a second later; everyone once, exit 0."""
    with_token(postmark, monkeypatch)
    postmark.fault(
        Fault(
            Reply.json(
                429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, **{"Retry-After": "1"}
            )
        )
    )
    files = make_campaign(tmp_path / "c", many_rows(30), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 0, result.stderr
    first, second = postmark.sends()
    assert first.body == second.body  # the very same request
    assert second.at - first.at >= 0.95
    assert sorted(postmark.recipients()) == sorted(r["email"] for r in many_rows(30))
    assert json.loads(result.stdout)["requests"] == 2


def test_a_call_that_stays_refused_with_503_is_deferred_for_the_next_run(
    tmp_path: Path, sendgrid: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503 on every try: the messages are `deferred` (exit 75), not failed; the next run sends."""
    with_token(sendgrid, monkeypatch)
    down = Reply.json(
        503, {"errors": [{"field": None, "message": "service unavailable"}]}, **{"Retry-After": "0"}
    )
    sendgrid.fault(Fault(down, times=4))
    files = make_campaign(
        tmp_path / "c", many_rows(2), extra=api_yaml(sendgrid) + "retry: {attempts: 1}\n"
    )
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["deferred"], summary["sent"]) == (1, 1)
    assert summary["failures"][0]["code"] == 503
    again = run("batch", files.yaml, "--json")
    assert again.exit_code == 0
    assert sorted(sendgrid.recipients()) == ["user00001@example.com", "user00002@example.com"]


def test_a_hang_after_the_provider_took_the_batch_leaves_it_unknown(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postmark takes the second batch and never answers: its messages are `unknown` (exit 75);
    a re-run sends nobody twice, and --retry-unknown is the only way to send them again."""
    with_token(postmark, monkeypatch)
    files = make_campaign(
        tmp_path / "c", many_rows(30), extra=api_yaml(postmark, timeout=1, batch_size=10)
    )
    postmark.fault(Fault(times=1))  # the first call goes through
    postmark.fault(Fault(hang_s=3.0))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["unknown"]) == (20, 10)
    assert len(postmark.recipients()) == 30  # the provider has all of them
    again = run("batch", files.yaml, "--json")
    assert again.exit_code == 75
    assert json.loads(again.stdout)["unknown"] == 10
    recipients = postmark.recipients()
    assert len(recipients) == len(set(recipients)) == 30
    status = json.loads(run("status", files.yaml, "--json").stdout)
    assert (status["sent"], status["unknown"]) == (20, 10)


def test_resend_retries_a_hung_call_with_the_same_idempotency_key(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resend takes a batch and hangs: the same request goes again with the same key, the
    provider replays its first answer, and every recipient is sent exactly once (exit 0)."""
    with_token(resend, monkeypatch)
    files = make_campaign(tmp_path / "c", many_rows(50), extra=api_yaml(resend, timeout=1))
    resend.fault(Fault(hang_s=3.0))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sent"] == 50
    first, second = resend.sends()
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body
    recipients = resend.recipients()
    assert len(recipients) == len(set(recipients)) == 50


def test_a_gateway_502_is_unknown_for_providers_without_idempotency(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 502 says a gateway lost the provider's answer: the batch may have been taken, so it is
    `unknown`, never resent by a later run."""
    with_token(postmark, monkeypatch)
    postmark.fault(Fault(Reply(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"})))
    files = make_campaign(tmp_path / "c", many_rows(5), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75
    assert json.loads(result.stdout)["unknown"] == 5
    run("batch", files.yaml)
    assert len(postmark.sends()) == 1


def test_a_call_refused_whole_is_split_so_one_bad_message_fails_alone(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 422 for a whole batch call (nothing taken): the messages go one by one; only the
    refused one fails."""
    with_token(resend, monkeypatch)
    resend.fault(
        Fault(
            Reply.json(
                422,
                {"statusCode": 422, "message": "Invalid `to` field.", "name": "validation_error"},
            )
        )
    )
    resend.refuse = {"user00002@example.com": (422, "Invalid `to` field.")}
    files = make_campaign(tmp_path / "c", many_rows(4), extra=api_yaml(resend))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["failed"]) == (3, 1)
    assert summary["failures"][0]["email"] == "user00002@example.com"
    assert [len(r.json()) if r.path.endswith("batch") else 1 for r in resend.sends()] == [
        4,
        1,
        1,
        1,
        1,
    ]
    assert sorted(resend.recipients()) == [
        "user00001@example.com",
        "user00003@example.com",
        "user00004@example.com",
    ]


def test_resend_permissive_batch_fails_only_the_refused_message(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x-batch-validation: permissive: the batch goes in one call, the refused message fails."""
    with_token(resend, monkeypatch)
    resend.refuse = {"user00003@example.com": (422, "The `to` address is invalid.")}
    files = make_campaign(tmp_path / "c", many_rows(5), extra=api_yaml(resend))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["sent"], summary["failed"], summary["requests"]) == (4, 1, 1)
    assert summary["failures"][0]["reply"] == "Resend: The `to` address is invalid."
    assert resend.sends()[0].headers["x-batch-validation"] == "permissive"


def test_sendgrid_and_mailgun_refuse_one_message_among_many(
    tmp_path: Path,
    sendgrid: SendGridServer,
    mailgun: MailgunServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One message a request: a 400 for one recipient fails that one, with the provider's text."""
    for server in (sendgrid, mailgun):
        with_token(server, monkeypatch)
        server.refuse = {"user00002@example.com": (400, "Does not contain a valid address.")}
        files = make_campaign(tmp_path / name_of(server), many_rows(3), extra=api_yaml(server))
        result = run("batch", files.yaml, "--json")
        assert result.exit_code == 1, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["sent"], summary["failed"]) == (2, 1)
        failure = summary["failures"][0]
        assert failure["code"] == 400
        assert "Does not contain a valid address." in failure["reply"]


def test_a_refused_token_stops_the_run_with_77_and_sends_nothing(
    tmp_path: Path, provider: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token the provider refuses: exit 77, nobody marked sent or unknown, nothing taken."""
    monkeypatch.setenv(TOKEN_ENV[name_of(provider)], "wrong-token")
    files = make_campaign(tmp_path / "c", many_rows(3), extra=api_yaml(provider))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 77, result.stderr
    assert "refused the API token" in result.stderr
    assert "wrong-token" not in result.stderr + result.stdout
    status = json.loads(run("status", files.yaml, "--json").stdout)
    assert (status["sent"], status["unknown"], status["pending"]) == (0, 0, 3)
    assert provider.taken == []


def test_nothing_listening_stops_the_run_with_69_and_marks_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server at the endpoint from the start: as for an SMTP server that cannot be reached,
    the run stops at once with 69 (no reconnect rounds), nobody `unknown`, no request made."""
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "t")
    files = make_campaign(
        tmp_path / "c",
        many_rows(3),
        extra="api: {provider: postmark, base_url: 'http://127.0.0.1:9'}\n",
    )
    campaign = mailcli.load_campaign(files.yaml)
    with pytest.raises(mailcli.UnavailableError, match="cannot reach Postmark"):
        mailcli.send_campaign(campaign, sleep=lambda s: None)
    status = mailcli.campaign_status(campaign)
    assert (status.pending, status.unknown) == (3, 0)
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 69
    assert "cannot reach Postmark at http://127.0.0.1:9" in result.stderr


# -- must show 3: test-connection, and no token in YAML -----------------------------------------


def test_test_connection_checks_the_token_read_only(
    tmp_path: Path, provider: ProviderServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A good token: exit 0, the account shown, no message sent; a refused one: 77."""
    files = make_campaign(tmp_path / "c", many_rows(1), extra=api_yaml(provider))
    with_token(provider, monkeypatch)
    good = run("test-connection", files.yaml, "--json")
    assert good.exit_code == 0, good.stdout + good.stderr
    report = json.loads(good.stdout)
    assert report["ok"] is True and report["transport"] == name_of(provider)
    assert report["account"]["name"]
    assert provider.sends() == [] and provider.requests
    shown = run("test-connection", files.yaml)
    assert shown.exit_code == 0 and "Result      OK" in shown.stdout
    monkeypatch.setenv(TOKEN_ENV[name_of(provider)], "refused-token")
    bad = run("test-connection", files.yaml, "--json")
    assert bad.exit_code == 77, bad.stdout
    assert json.loads(bad.stdout)["ok"] is False
    assert "refused-token" not in bad.stdout + bad.stderr


def test_test_connection_shows_the_limits_the_provider_reports(
    tmp_path: Path,
    sendgrid: SendGridServer,
    mailgun: MailgunServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SendGrid's credits and Mailgun's monthly limit appear in the report."""
    with_token(sendgrid, monkeypatch)
    with_token(mailgun, monkeypatch)
    for server, key, value in ((sendgrid, "remain", 98000), (mailgun, "limit", 50000)):
        files = make_campaign(tmp_path / name_of(server), many_rows(1), extra=api_yaml(server))
        report = json.loads(run("test-connection", files.yaml, "--json").stdout)
        assert report["limits"][key] == value
        assert f"{key} {value}" in run("test-connection", files.yaml).stdout


def test_test_connection_takes_a_resend_sending_only_key(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resend answers 401 restricted_api_key to a sending-only key on /domains: the key works."""
    with_token(resend, monkeypatch)
    resend.sending_only = True
    files = make_campaign(tmp_path / "c", many_rows(1), extra=api_yaml(resend))
    result = run("test-connection", files.yaml, "--json")
    assert result.exit_code == 0
    assert "sending-only" in json.loads(result.stdout)["account"]["name"]


def test_test_connection_with_nothing_listening_is_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESEND_API_KEY", "re_x")
    files = make_campaign(
        tmp_path / "c", extra="api: {provider: resend, base_url: 'http://127.0.0.1:9'}\n"
    )
    result = run("test-connection", files.yaml, "--json")
    assert result.exit_code == 69
    assert json.loads(result.stdout)["error"]


@pytest.mark.parametrize("key", ["token", "api_key", "server_token"])
def test_a_token_in_yaml_is_a_configuration_error(tmp_path: Path, key: str) -> None:
    """`api: {token: ...}`: exit 78 naming the file, line and the places a token may come from."""
    files = make_campaign(tmp_path / "c", extra=f"api:\n  provider: postmark\n  {key}: abc123\n")
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 78
    assert f"campaign.yaml:10: 'api.{key}'" in result.stderr
    assert "POSTMARK_SERVER_TOKEN" in result.stderr
    assert "abc123" not in result.stderr


def test_no_token_anywhere_says_where_one_may_come_from(tmp_path: Path, no_keyring: None) -> None:
    files = make_campaign(tmp_path / "c", extra="api: {provider: sendgrid}\n")
    result = run("batch", files.yaml)
    assert result.exit_code == 78
    assert "no API token for SendGrid" in result.stderr
    assert "SENDGRID_API_KEY" in result.stderr and "token_command" in result.stderr


def test_the_token_from_the_keyring_and_from_token_command(
    tmp_path: Path, postmark: PostmarkServer, test_keyring: Path
) -> None:
    """`mailcli password set --api postmark` (stdin), then a run uses it; token_command too."""
    stored = runner.invoke(
        app, ["password", "set", "--api", "postmark"], input=postmark.token + "\n"
    )
    assert stored.exit_code == 0, stored.output
    assert postmark.token not in stored.output
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(postmark))
    assert run("batch", files.yaml).exit_code == 0
    assert runner.invoke(app, ["password", "delete", "--api", "postmark"]).exit_code == 0
    script = tmp_path / "token.sh"
    script.write_text(f"#!/bin/sh\necho {postmark.token}\n", encoding="utf-8")
    script.chmod(0o700)
    other = make_campaign(
        tmp_path / "d", many_rows(2), extra=api_yaml(postmark, token_command=str(script))
    )
    assert run("batch", other.yaml).exit_code == 0
    assert len(postmark.recipients()) == 4


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("{provider: resend, stream: broadcast}", "'api.stream': Resend has no stream"),
        ("{provider: mailgun}", "'api.domain': Mailgun needs the sending domain"),
        (
            "{provider: postmark, base_url: 'http://api.example.com'}",
            "http:// is only for a loopback host",
        ),
        ("{provider: sparkpost}", "unknown provider 'sparkpost'"),
        ("{provider: resend, tag: 'spring news'}", "'api.tag': Resend takes ASCII letters"),
    ],
)
def test_provider_options_are_checked_with_file_and_line(
    tmp_path: Path, options: str, says: str
) -> None:
    files = make_campaign(tmp_path / "c", extra=f"api: {options}\n")
    result = run("batch", files.yaml, "--dry-run")
    assert result.exit_code == 78
    assert says in result.stderr
    assert "campaign.yaml:8:" in result.stderr


def test_dkim_on_a_provider_that_signs_itself_is_refused_before_anything_is_sent(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign asks for mailcli's DKIM signature and Postmark would drop it: exit 78 naming
    the key and the provider, in a dry run and a real one; nothing reaches the server."""
    from mailcli.dkimsign import generate_key

    with_token(postmark, monkeypatch)
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "dkim.pem").write_bytes(generate_key(1024))
    extra = api_yaml(postmark) + "dkim: {domain: acme.example, selector: s1, key: dkim.pem}\n"
    files = make_campaign(folder, many_rows(2), extra=extra)
    for args in (("--dry-run",), ()):
        result = run("batch", files.yaml, *args)
        assert result.exit_code == 78, result.stderr
        assert "'dkim': Postmark cannot carry" in result.stderr
    assert postmark.requests == []


def test_mailgun_carries_the_exact_bytes_dkim_signature_included(
    tmp_path: Path, mailgun: MailgunServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """messages.mime gets the bytes mailcli built: the DKIM signature verifies on what the
    provider received, and the envelope recipient is in `to`."""
    import dkim

    from mailcli.dkimsign import DkimSigner, generate_key

    with_token(mailgun, monkeypatch)
    folder = tmp_path / "c"
    folder.mkdir()
    pem = generate_key(1024)
    (folder / "dkim.pem").write_bytes(pem)
    extra = api_yaml(mailgun, tag="spring", metadata={"campaign": "spring"}) + (
        "dkim: {domain: example.com, selector: s1, key: dkim.pem}\n"
    )
    files = make_campaign(folder, many_rows(1), extra=extra)
    files.yaml.write_text(files.yaml.read_text().replace("sender@example.com", "news@example.com"))
    assert run("batch", files.yaml).exit_code == 0
    (taken,) = mailgun.taken
    assert taken.form["to"] == ["user00001@example.com"]
    assert taken.form["o:tag"] == ["spring"] and taken.form["v:campaign"] == ["spring"]
    record = DkimSigner(pem, domain="example.com", selector="s1", where="test").public_key_record
    assert dkim.verify(taken.message, dnsfunc=lambda name, timeout=5: record.encode())


# -- messages mapped faithfully ------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def rich_message() -> mailcli.Message:
    message = mailcli.Message(
        "Spring offers for Chloé",
        ["Chloé Dubois <chloe@example.com>"],
        body="Hello Chloé\n",
        html='<p>Hello Chloé <img src="cid:logo"></p>',
        sender=SENDER,
        cc=["Bob <bob@example.com>"],
        bcc=["audit@example.com"],
        reply_to="support@acme.example",
        extra_headers={"X-Campaign": "spring"},
        inline_images={"logo": PNG},
        unsubscribe="https://acme.example/u/1",
        list_id="Acme News <news.acme.example>",
    )
    message.attach("offer.pdf", "application/pdf", b"%PDF-1.4 offer")
    return message


def test_postmark_maps_every_part_of_a_message(postmark: PostmarkServer) -> None:
    config = ApiConfig(
        "postmark", base_url=postmark.url, stream="broadcast", tag="spring", metadata={"c": "1"}
    )
    delivery = mailcli.Mailer(api=config, token=postmark.token).send(rich_message())
    assert delivery.status is DeliveryStatus.SENT and delivery.provider_id
    (taken,) = postmark.taken
    body = taken.message
    assert body["From"] == SENDER
    assert body["To"] == "Chloé Dubois <chloe@example.com>"
    assert (body["Cc"], body["Bcc"], body["ReplyTo"]) == (
        "Bob <bob@example.com>",
        "audit@example.com",
        "support@acme.example",
    )
    assert body["Subject"] == "Spring offers for Chloé"
    assert body["TextBody"] == "Hello Chloé\n" and "cid:logo" in body["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers["List-Unsubscribe"] == "<https://acme.example/u/1>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Id"] == "Acme News <news.acme.example>"
    assert headers["X-Campaign"] == "spring"
    assert headers["Message-ID"] == delivery.message_id
    files = {a["Name"]: a for a in body["Attachments"]}
    assert files["logo.png"]["ContentID"] == "cid:logo"
    assert base64.b64decode(files["logo.png"]["Content"]) == PNG
    assert base64.b64decode(files["offer.pdf"]["Content"]) == b"%PDF-1.4 offer"
    assert "ContentID" not in files["offer.pdf"]
    assert (body["MessageStream"], body["Tag"], body["Metadata"]) == (
        "broadcast",
        "spring",
        {"c": "1"},
    )
    assert sorted(taken.recipients) == ["audit@example.com", "bob@example.com", "chloe@example.com"]


def test_resend_maps_every_part_and_sends_attachments_alone(resend: ResendServer) -> None:
    """Resend's batch endpoint takes no attachments: a message with files goes to /emails."""
    mailer = mailcli.Mailer(
        api=ApiConfig("resend", base_url=resend.url, tag="spring"), token=resend.token
    )
    with mailer.connect() as conn:
        plain = mailcli.Message("Hi", ["ann@example.com"], body="hi", sender=SENDER)
        deliveries = conn.send_many([plain, rich_message(), plain])
    assert [d.status for d in deliveries] == [DeliveryStatus.SENT] * 3
    assert [r.path for r in resend.sends()] == ["/emails/batch", "/emails", "/emails/batch"]
    body = resend.taken[1].message
    assert body["to"] == ["Chloé Dubois <chloe@example.com>"]
    assert (body["cc"], body["bcc"], body["reply_to"]) == (
        ["Bob <bob@example.com>"],
        ["audit@example.com"],
        ["support@acme.example"],
    )
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    files = {a["filename"]: a for a in body["attachments"]}
    assert files["logo.png"]["content_id"] == "logo"
    assert body["tags"] == [{"name": "tag", "value": "spring"}]


def test_sendgrid_maps_every_part_text_before_html(sendgrid: SendGridServer) -> None:
    mailer = mailcli.Mailer(
        api=ApiConfig("sendgrid", base_url=sendgrid.url, tag="spring", metadata={"c": "1"}),
        token=sendgrid.token,
    )
    delivery = mailer.send(rich_message())
    assert delivery.code == 202 and delivery.provider_id == sendgrid.taken[0].id
    body = sendgrid.taken[0].message
    person = body["personalizations"][0]
    assert person["to"] == [{"email": "chloe@example.com", "name": "Chloé Dubois"}]
    assert person["bcc"] == [{"email": "audit@example.com"}]
    assert body["reply_to"] == {"email": "support@acme.example"}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    inline = [a for a in body["attachments"] if a["disposition"] == "inline"]
    assert inline[0]["content_id"] == "logo"
    assert body["headers"]["X-Campaign"] == "spring"
    assert (body["categories"], body["custom_args"]) == (["spring"], {"c": "1"})


def test_mailgun_gets_the_message_bytes_and_every_envelope_recipient(
    mailgun: MailgunServer,
) -> None:
    message = rich_message()
    mailer = mailcli.Mailer(
        api=ApiConfig("mailgun", base_url=mailgun.url, domain="mg.acme.example"),
        token=mailgun.token,
    )
    delivery = mailer.send(message)
    (taken,) = mailgun.taken
    assert sorted(taken.form["to"]) == ["audit@example.com", "bob@example.com", "chloe@example.com"]
    parsed = BytesParser(policy=email.policy.default).parsebytes(taken.message)
    assert parsed["Message-ID"] == delivery.message_id
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Bcc" not in parsed
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["offer.pdf"]


def test_a_message_a_provider_cannot_take_fails_unsent(postmark: PostmarkServer) -> None:
    """Postmark refuses .exe attachments: that message fails before any request, the other goes."""
    mailer = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), token=postmark.token)
    bad = mailcli.Message("Tool", ["ann@example.com"], body="here", sender=SENDER)
    bad.attach("setup.exe", "application/octet-stream", b"MZ")
    good = mailcli.Message("Hi", ["bob@example.com"], body="hi", sender=SENDER)
    with mailer.connect() as conn:
        first, second = conn.send_many([bad, good])
    assert first.status is DeliveryStatus.FAILED and first.code is None
    assert "Postmark refuses .exe attachments" in first.reply
    assert second.ok
    assert [len(r.json()) for r in postmark.sends()] == [1]


def test_header_injection_is_refused_before_any_request(postmark: PostmarkServer) -> None:
    mailer = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), token=postmark.token)
    with pytest.raises(mailcli.BadHeaderError):
        mailer.send(
            mailcli.Message(
                "Hi\r\nBcc: x@evil.example", ["ann@example.com"], body="x", sender=SENDER
            )
        )
    assert postmark.requests == []


# -- the library, asyncio, Flask, one-off sends ---------------------------------------------------


def test_mailer_api_connect_send_many_over_one_connection(
    postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Mailer(api="postmark")` with the token from POSTMARK_SERVER_TOKEN; 120 messages in one
    batch call over one connection; a refusal is data."""
    with_token(postmark, monkeypatch)
    postmark.refuse = {"u7@example.com": (406, "Inactive recipient")}
    mailer = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), default_sender=SENDER)
    messages = [mailcli.Message(f"Hi {i}", [f"u{i}@example.com"], body="hi") for i in range(120)]
    with mailer.connect() as conn:
        deliveries = conn.send_many(messages)
    assert conn.connections == 1
    assert sum(d.ok for d in deliveries) == 119
    refused = deliveries[7]
    assert (refused.status, refused.code, refused.reply) == (
        DeliveryStatus.FAILED,
        406,
        "Postmark: Inactive recipient",
    )
    assert len(postmark.sends()) == 1


def test_send_async_over_an_api_shares_a_few_connections(sendgrid: SendGridServer) -> None:
    """60 concurrent send_async calls: all sent, over at most max_connections connections."""
    mailer = mailcli.Mailer(
        api=ApiConfig("sendgrid", base_url=sendgrid.url),
        token=sendgrid.token,
        default_sender=SENDER,
        max_connections=3,
    )

    async def main() -> list[mailcli.Delivery]:
        try:
            return await asyncio.gather(
                *(
                    mailer.send_async(mailcli.Message("Hi", [f"a{i}@example.com"], body="x"))
                    for i in range(60)
                )
            )
        finally:
            await mailer.aclose()

    deliveries = asyncio.run(main())
    assert all(d.ok for d in deliveries)
    assert sendgrid.connections <= 3
    assert len(sendgrid.taken) == 60


def test_connect_async_over_an_api(resend: ResendServer) -> None:
    mailer = mailcli.Mailer(
        api=ApiConfig("resend", base_url=resend.url), token=resend.token, default_sender=SENDER
    )

    async def main() -> list[mailcli.Delivery]:
        async with mailer.connect_async() as conn:
            return await conn.send_many(
                [mailcli.Message("Hi", [f"b{i}@example.com"], body="x") for i in range(30)]
            )

    assert all(d.ok for d in asyncio.run(main()))
    assert len(resend.sends()) == 1


def test_record_messages_covers_api_mailers(postmark: PostmarkServer) -> None:
    """Inside record_messages() an API Mailer records too and makes no request."""
    mailer = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), token="x")
    with mailcli.record_messages() as outbox:
        mailer.send(mailcli.Message("Hi", ["ann@example.com"], body="x", sender=SENDER))
    assert len(outbox) == 1 and postmark.requests == []


def test_a_library_token_refused_raises_auth_error_no_message_lost(
    postmark: PostmarkServer,
) -> None:
    mailer = mailcli.Mailer(
        api=ApiConfig("postmark", base_url=postmark.url), token="nope", default_sender=SENDER
    )
    with pytest.raises(AuthError, match="Postmark refused the API token"):
        mailer.send(mailcli.Message("Hi", ["ann@example.com"], body="x"))
    assert postmark.taken == []
    transport = ApiTransport(
        ApiConfig("postmark", base_url=postmark.url), lambda: "nope", sleep=lambda s: None
    )
    transport.open()
    results = transport.send(
        [mailer.build([mailcli.Message("Hi", ["b@example.com"], body="x")])[0]]
    )
    assert results[0].__class__.__name__ == "NotSent"
    with pytest.raises(AuthError):
        transport.open()


def test_mailer_refuses_dkim_with_a_provider_that_signs(tmp_path: Path) -> None:
    from mailcli.campaign import DkimConfig

    with pytest.raises(ConfigError, match="Resend cannot carry mailcli's own DKIM"):
        mailcli.Mailer(api="resend", dkim=DkimConfig("acme.example", "s1", key=tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="not both"):
        mailcli.Mailer(host="smtp.example.com", api="postmark")


def test_flask_mail_api(postmark: PostmarkServer) -> None:
    """A Flask app with MAIL_API: mail.send goes through Postmark; the token from MAIL_API_TOKEN."""
    from flask import Flask

    from mailcli.flask import Mail, Message

    app_ = Flask(__name__)
    app_.config.update(
        MAIL_API="postmark",
        MAIL_API_TOKEN=postmark.token,
        MAIL_API_OPTIONS={"base_url": postmark.url, "stream": "outbound"},
        MAIL_DEFAULT_SENDER=SENDER,
        MAIL_SUPPRESS_SEND=False,
    )
    mail = Mail(app_)
    with app_.app_context():
        mail.send(Message("Welcome", recipients=["ann@example.com"], body="hello"))
        with mail.connect() as conn:
            for i in range(3):
                conn.send(Message("Digest", recipients=[f"d{i}@example.com"], body="x"))
    assert postmark.recipients() == [
        "ann@example.com",
        "d0@example.com",
        "d1@example.com",
        "d2@example.com",
    ]


def test_send_command_over_a_profile_with_an_api(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mailcli send --profile pm` where the profile has `api:`; --json reports the provider id."""
    with_token(postmark, monkeypatch)
    config = tmp_path / "config.yaml"
    config.write_text(
        f'profiles:\n  pm:\n    from: "{SENDER}"\n'
        f"    api: {{provider: postmark, base_url: '{postmark.url}'}}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    result = run(
        "send",
        "--profile",
        "pm",
        "--to",
        "ann@example.com",
        "--subject",
        "Hi",
        "--text",
        "hello",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "sent" and postmark.taken[0].id in report["reply"]
    also = run(
        "send",
        "--api",
        "postmark",
        "--profile",
        "pm",
        "--to",
        "bob@example.com",
        "--subject",
        "Hi",
        "--text",
        "x",
    )
    assert also.exit_code == 0, also.stderr
    assert postmark.recipients() == ["ann@example.com", "bob@example.com"]


# -- pure pieces ------------------------------------------------------------------------------


def test_retry_after_reads_every_form_providers_use() -> None:
    now = 1_800_000_000.0
    assert retry_after({"Retry-After": "3"}, now=now) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}, now=now) == 0.0  # past
    future = "Fri, 15 Jan 2027 08:00:10 GMT"  # 1_800_000_000 is 2027-01-15T08:00:00Z
    assert retry_after({"Retry-After": future}, now=now) == 10.0
    assert retry_after({"ratelimit-reset": "2"}, now=now) == 2.0  # Resend: seconds
    assert retry_after({"X-RateLimit-Reset": str(int(now) + 5)}, now=now) == 5.0  # epoch
    assert retry_after({}, now=now) is None
    assert retry_after({"Retry-After": "soon"}, now=now) is None


def test_the_timeout_flag_bounds_each_api_call(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--timeout wins over the file's api.timeout: a call left unanswered ends as a timeout
    (its messages `unknown`), not when the provider finally hangs up."""
    with_token(postmark, monkeypatch)
    postmark.fault(Fault(hang_s=4.0))
    files = make_campaign(tmp_path / "c", many_rows(3), extra=api_yaml(postmark, timeout=60))
    result = run("batch", files.yaml, "--timeout", "0.5", "--json")
    assert result.exit_code == 75
    summary = json.loads(result.stdout)
    assert summary["unknown"] == 3
    assert "timed out" in summary["failures"][0]["reply"]


def test_https_is_verified_and_an_untrusted_certificate_stops_the_run_with_69(
    tmp_path: Path, ca: Any, trust_ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTPS the provider's certificate is checked against the trust store: a trusted one
    delivers; another CA's stops the run at once with exit 69, nobody marked, nothing sent."""
    import trustme
    from conftest import server_tls_context

    trusted = PostmarkServer().start(server_tls_context(ca))
    untrusted = PostmarkServer().start(server_tls_context(trustme.CA()))
    try:
        for server in (trusted, untrusted):
            with_token(server, monkeypatch)
        good = make_campaign(tmp_path / "good", many_rows(3), extra=api_yaml(trusted))
        assert run("batch", good.yaml).exit_code == 0
        assert len(trusted.recipients()) == 3
        bad = make_campaign(tmp_path / "bad", many_rows(3), extra=api_yaml(untrusted))
        result = run("batch", bad.yaml, "--json")
        assert result.exit_code == 69, result.stderr
        assert "TLS certificate of https://localhost" in result.stderr
        status = mailcli.campaign_status(mailcli.load_campaign(bad.yaml))
        assert (status.pending, status.unknown, status.sent) == (3, 0, 0)
        assert untrusted.requests == []
        library = mailcli.Mailer(api=ApiConfig("postmark", base_url=untrusted.url), token="x")
        with pytest.raises(mailcli.UnavailableError, match="not trusted"):
            library.send(mailcli.Message("Hi", ["a@example.com"], body="x", sender=SENDER))
        report = run("test-connection", bad.yaml, "--json")
        assert report.exit_code == 69
    finally:
        trusted.stop()
        untrusted.stop()


# -- answers about the account, the endpoint or the token, not a message -----------------------


def test_a_token_with_a_line_break_is_a_configuration_error_never_echoed(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token a header cannot carry: exit 78 before any request, the token nowhere, nobody
    marked (not `unknown`)."""
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "SECRET-TOKEN\nsecond-line")
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 78, result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    assert "cannot carry" in result.stderr
    status = mailcli.campaign_status(mailcli.load_campaign(files.yaml))
    assert (status.pending, status.unknown) == (2, 0)
    assert postmark.requests == []
    monkeypatch.setenv("POSTMARK_SERVER_TOKEN", "jeton-sécret")
    assert run("batch", files.yaml).exit_code == 78


def test_a_redirect_is_a_configuration_error_and_marks_nobody(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 308 (a proxy, a moved endpoint): the token is not sent after it; exit 78, all pending."""
    with_token(postmark, monkeypatch)
    postmark.fault(Fault(Reply(308, b"", {"Location": "https://elsewhere.example/email/batch"})))
    files = make_campaign(tmp_path / "c", many_rows(3), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 78, result.stderr
    assert "a redirect to 'https://elsewhere.example/email/batch'" in result.stderr
    status = mailcli.campaign_status(mailcli.load_campaign(files.yaml))
    assert (status.pending, status.failed, status.unknown) == (3, 0, 0)


def test_an_answer_that_does_not_decode_leaves_the_call_unknown(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 200 whose gzip body is not gzip: the provider answered, nobody can say what; the
    messages are `unknown` (exit 75), never a traceback."""
    with_token(postmark, monkeypatch)
    postmark.fault(Fault(Reply(200, b"not gzip at all", {"Content-Encoding": "gzip"})))
    files = make_campaign(tmp_path / "c", many_rows(3), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75, result.stderr
    summary = json.loads(result.stdout)
    assert summary["unknown"] == 3
    assert "answered unreadably" in summary["failures"][0]["reply"]


def test_a_refusal_of_the_sender_stops_the_run_after_one_call(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resend 403 "domain not verified" is about the sender, not one message: one request,
    exit 78, nobody marked failed (the run can go once the domain is verified)."""
    with_token(resend, monkeypatch)
    resend.fault(
        Fault(
            Reply.json(
                403,
                {
                    "statusCode": 403,
                    "message": "The example.com domain is not verified. "
                    "Please, add and verify your domain.",
                    "name": "validation_error",
                },
            )
        )
    )
    files = make_campaign(tmp_path / "c", many_rows(40), extra=api_yaml(resend))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 78, result.stderr
    assert "domain is not verified" in result.stderr
    assert len(resend.sends()) == 1
    status = mailcli.campaign_status(mailcli.load_campaign(files.yaml))
    assert (status.pending, status.failed) == (40, 0)
    assert run("batch", files.yaml).exit_code == 0  # verified now: everyone goes
    assert len(resend.recipients()) == 40


def test_postmark_out_of_credits_for_a_whole_call_defers_it(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """422 with ErrorCode 405 (not allowed to send: out of credits) for the batch: deferred,
    one request, exit 75; never split into one request per message."""
    with_token(postmark, monkeypatch)
    postmark.fault(
        Fault(Reply.json(422, {"ErrorCode": 405, "Message": "You have run out of credits."}))
    )
    files = make_campaign(
        tmp_path / "c", many_rows(20), extra=api_yaml(postmark) + "retry: {attempts: 1}\n"
    )
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75
    summary = json.loads(result.stdout)
    assert (summary["deferred"], summary["requests"]) == (20, 1)
    assert summary["failures"][0]["code"] == 405


def test_mailgun_wrong_domain_is_a_configuration_error(
    tmp_path: Path, mailgun: MailgunServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A domain the account does not have: 404 for the call, exit 78 with the hint."""
    with_token(mailgun, monkeypatch)
    files = make_campaign(
        tmp_path / "c", many_rows(3), extra=api_yaml(mailgun, domain="mg.other.example")
    )
    result = run("batch", files.yaml)
    assert result.exit_code == 78
    assert "api.domain" in result.stderr
    assert len(mailgun.sends()) == 1
    report = run("test-connection", files.yaml, "--json")
    assert report.exit_code == 78


def test_resend_403_invalid_api_key_is_a_refused_token(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    resend.bad_key_status = 403
    monkeypatch.setenv("RESEND_API_KEY", "re_wrong")
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(resend))
    assert run("batch", files.yaml).exit_code == 77
    assert run("test-connection", files.yaml).exit_code == 77


def test_sendgrid_test_connection_reads_the_keys_scopes(
    tmp_path: Path, sendgrid: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "Mail Send" restricted key cannot read the account but can send: exit 0; a key without
    mail.send: exit 77."""
    with_token(sendgrid, monkeypatch)
    files = make_campaign(tmp_path / "c", many_rows(1), extra=api_yaml(sendgrid))
    sendgrid.scopes = ["mail.send"]
    report = json.loads(run("test-connection", files.yaml, "--json").stdout)
    assert report["ok"] is True and report["account"]["name"] == "a key with mail.send"
    sendgrid.scopes = ["user.account.read"]
    refused = run("test-connection", files.yaml, "--json")
    assert refused.exit_code == 77
    assert "may not send" in json.loads(refused.stdout)["error"]


# -- choosing the transport ------------------------------------------------------------------


def test_the_api_flag_keeps_the_campaigns_own_api_options(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--api postmark` on a Postmark campaign keeps its base_url, stream and tag."""
    with_token(postmark, monkeypatch)
    files = make_campaign(
        tmp_path / "c", many_rows(2), extra=api_yaml(postmark, stream="broadcast", tag="spring")
    )
    assert run("batch", files.yaml, "--api", "postmark").exit_code == 0
    (call,) = postmark.sends()
    assert {(m["MessageStream"], m["Tag"]) for m in call.json()} == {("broadcast", "spring")}


def test_the_host_flag_sends_an_api_campaign_over_smtp(
    tmp_path: Path, postmark: PostmarkServer, smtp_server: Any, recorder: Any
) -> None:
    """`--host` on the command line wins over the campaign's `api:`: SMTP, as asked."""
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(postmark))
    result = run("batch", files.yaml, *server_args(smtp_server), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["transport"] == "smtp"
    assert len(recorder.messages) == 2 and postmark.requests == []


def test_a_bcc_only_message_is_refused_by_json_apis_and_sent_by_mailgun(
    postmark: PostmarkServer, mailgun: MailgunServer
) -> None:
    message = mailcli.Message("Hi", bcc=["hidden@example.com"], body="x", sender=SENDER)
    pm = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), token=postmark.token)
    delivery = pm.send(message)
    assert delivery.status is DeliveryStatus.FAILED and "no To address" in delivery.reply
    mg = mailcli.Mailer(
        api=ApiConfig("mailgun", base_url=mailgun.url, domain="mg.acme.example"),
        token=mailgun.token,
    )
    assert mg.send(message).ok
    assert mailgun.taken[0].form["to"] == ["hidden@example.com"]
    assert postmark.requests == []


def test_an_error_reading_the_list_during_a_call_keeps_what_was_sent(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list is rewritten with bytes that are not UTF-8 while a call is in flight: the run
    stops on that error once the call's outcomes are recorded; nobody is sent twice after."""
    with_token(postmark, monkeypatch)
    rows = many_rows(600)
    files = make_campaign(tmp_path / "c", rows, extra=api_yaml(postmark, batch_size=100))
    original = files.csv.read_bytes()

    def spoil(record: Any) -> None:
        if len(postmark.sends()) == 1:
            files.csv.write_bytes(original[:20] + b"\xff\xfe broken \xff" * 4000)

    postmark.on_request = spoil
    first = run("batch", files.yaml, "--json")
    assert first.exit_code == 65, first.stderr
    assert "cannot decode the file as utf-8" in first.stderr
    sent_first = len(postmark.recipients())
    assert sent_first >= 100
    postmark.on_request = None
    files.csv.write_bytes(original)
    second = run("batch", files.yaml, "--json")
    assert second.exit_code in (0, 75), second.stderr
    recipients = postmark.recipients()
    assert len(recipients) == len(set(recipients))
    status = mailcli.campaign_status(mailcli.load_campaign(files.yaml))
    assert status.sent == len(recipients)


def test_calls_are_sized_by_bytes_as_well_as_by_count(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Postmark's byte limit for a call set low (3,000 bytes), a group of 20 messages of
    about 600 bytes goes in several calls, each under the limit, each message once."""
    from mailcli.providers import Postmark

    monkeypatch.setattr(Postmark, "call_bytes_max", 3000)
    with_token(postmark, monkeypatch)
    files = make_campaign(tmp_path / "c", many_rows(20), extra=api_yaml(postmark))
    assert run("batch", files.yaml).exit_code == 0
    calls = postmark.sends()
    assert len(calls) > 2
    assert all(len(c.body) <= 3000 for c in calls)
    assert sum(len(c.json()) for c in calls) == 20
    assert sorted(postmark.recipients()) == sorted(r["email"] for r in many_rows(20))


def test_a_rate_limit_announced_as_spent_holds_the_next_call_until_the_reset(
    tmp_path: Path, resend: ResendServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resend says `ratelimit-remaining: 0`, `ratelimit-reset: 1` on an accepted call: the next
    call waits for the reset instead of earning a 429."""
    with_token(resend, monkeypatch)
    monkeypatch.setattr(
        resend,
        "limits",
        lambda: {"ratelimit-limit": "2", "ratelimit-remaining": "0", "ratelimit-reset": "1"},
    )
    files = make_campaign(tmp_path / "c", many_rows(4), extra=api_yaml(resend, batch_size=2))
    assert run("batch", files.yaml).exit_code == 0
    first, second = resend.sends()
    assert second.at - first.at >= 0.9
    assert len(resend.recipients()) == 4


def test_a_provider_that_quotes_the_token_back_does_not_put_it_in_mailclis_output(
    tmp_path: Path, mailgun: MailgunServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal whose text repeats the key (plain, or as the Basic credentials): redacted
    wherever mailcli shows it, in the error, --json and the state."""
    with_token(mailgun, monkeypatch)
    basic = base64.b64encode(f"api:{mailgun.token}".encode()).decode()
    mailgun.refuse = {
        "user00001@example.com": (400, f"bad request from key {mailgun.token} ({basic})")
    }
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(mailgun))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 1
    status = run("status", files.yaml, "--failed", "--json")
    for text in (result.stdout, result.stderr, status.stdout):
        assert mailgun.token not in text and basic not in text
    assert "<redacted>" in json.loads(status.stdout)["recipients"][0]["reply"]


def test_an_answer_nested_past_any_sense_is_unknown_not_a_traceback(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_token(postmark, monkeypatch)
    postmark.fault(Fault(Reply(200, b"[" * 200_000, {"Content-Type": "application/json"})))
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(postmark))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 75
    assert json.loads(result.stdout)["unknown"] == 2


def test_postmark_refusing_the_sender_for_every_message_of_a_batch_stops_the_run(
    tmp_path: Path, postmark: PostmarkServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP 200 with ErrorCode 400 (no sender signature) for every message: nothing was taken;
    exit 78, nobody marked failed."""
    with_token(postmark, monkeypatch)
    rows = many_rows(3)
    postmark.refuse = {
        r["email"]: (400, "The 'From' address is not a Sender Signature.") for r in rows
    }
    files = make_campaign(tmp_path / "c", rows, extra=api_yaml(postmark))
    result = run("batch", files.yaml)
    assert result.exit_code == 78
    assert "not a Sender Signature" in result.stderr
    status = mailcli.campaign_status(mailcli.load_campaign(files.yaml))
    assert (status.pending, status.failed) == (3, 0)


def test_an_attachment_named_like_an_encoded_word_is_carried_as_named(
    postmark: PostmarkServer,
) -> None:
    message = mailcli.Message("Hi", ["ann@example.com"], body="x", sender=SENDER)
    message.attach("=?utf-8?b?a?=.txt", "text/plain", b"data")
    mailer = mailcli.Mailer(api=ApiConfig("postmark", base_url=postmark.url), token=postmark.token)
    assert mailer.send(message).ok
    (attachment,) = postmark.taken[0].message["Attachments"]
    assert attachment["Name"] == "=?utf-8?b?a?=.txt"


@pytest.mark.parametrize("status", [408, 421])
def test_requests_the_provider_did_not_process_are_sent_again(
    tmp_path: Path, sendgrid: SendGridServer, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """408 (the request timed out before it was read) and 421 (misdirected): nothing was taken;
    the same message goes again, and each recipient gets it once."""
    with_token(sendgrid, monkeypatch)
    sendgrid.fault(
        Fault(
            Reply.json(
                status,
                {"errors": [{"field": None, "message": "try again"}]},
                **{"Retry-After": "0"},
            )
        )
    )
    files = make_campaign(tmp_path / "c", many_rows(2), extra=api_yaml(sendgrid))
    result = run("batch", files.yaml, "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(sendgrid.recipients()) == ["user00001@example.com", "user00002@example.com"]
