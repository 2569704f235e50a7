"""The batch engine against a real aiosmtpd server, with faults injected on the server side."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from conftest import Recorder, connect_to, make_campaign, many_rows, no_sleep

from mailcli.batch import dry_run, send_batch
from mailcli.campaign import Rate, load_campaign
from mailcli.errors import ExitCode, UnavailableError
from mailcli.ratelimit import RateLimiter
from mailcli.sandbox import SmtpServer
from mailcli.transport import SmtpSettings, SmtpTransport


@pytest.fixture(params=[False, True], ids=["lockstep", "pipelining"])
def recorder(request: pytest.FixtureRequest) -> Recorder:
    """Every test here runs against a server without and with PIPELINING (RFC 2920)."""
    return Recorder(pipelining=request.param)


def test_thousand_recipients_arrive_over_one_connection_each_once(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """1,000 rows become 1,000 messages on a single SMTP connection, one per recipient."""
    files = make_campaign(tmp_path, many_rows(1000))
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert summary.exit_code == ExitCode.OK
    assert (summary.sent, summary.connections) == (1000, 1)
    assert recorder.connections == 1
    delivered = recorder.recipients()
    assert len(delivered) == 1000
    assert sorted(delivered) == sorted(f"user{i:05d}@example.com" for i in range(1, 1001))


def test_each_message_is_personalised(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Every recipient gets their own subject and body, addressed to them alone."""
    files = make_campaign(tmp_path)
    send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    by_rcpt = {m.rcpt_tos[0]: m.message for m in recorder.messages}
    chloe = by_rcpt["chloe@example.net"]
    assert chloe["Subject"] == "Hello Chloé"
    assert chloe["To"].addresses[0].display_name == "Chloé Dubois"
    assert "Hi Chloé," in chloe.get_body(("plain",)).get_content()
    assert by_rcpt["ann@example.com"]["Subject"] == "Hello Ann"


def test_duplicate_addresses_are_sent_once(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The same address twice (in any case) gets one message; the second row is a duplicate."""
    rows = [
        {"email": "ann@example.com", "name": "A", "first_name": "A"},
        {"email": "ANN@Example.com", "name": "A2", "first_name": "A2"},
        {"email": "bob@example.com", "name": "B", "first_name": "B"},
    ]
    files = make_campaign(tmp_path, rows)
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert (summary.sent, summary.duplicates, summary.total) == (2, 1, 3)
    assert sorted(recorder.recipients()) == ["ann@example.com", "bob@example.com"]


def test_invalid_rows_stop_the_run_before_connecting(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A bad address anywhere in the list means exit 65, no connection, nothing sent."""
    rows = [*many_rows(5), {"email": "not-an-address", "name": "X", "first_name": "X"}]
    files = make_campaign(tmp_path, rows)
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert summary.exit_code == ExitCode.DATAERR
    assert [p.row for p in summary.problems] == [6]
    assert recorder.peers == [] and recorder.messages == []


def test_undefined_variable_is_a_row_problem(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A row without a value the template needs is invalid, never sent with a blank."""
    files = make_campaign(tmp_path, text="Hi {{ nickname }}\n")
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert summary.exit_code == ExitCode.DATAERR
    assert "'nickname' is undefined" in summary.problems[0].problem
    assert recorder.messages == []


def test_skip_invalid_sends_the_valid_rows(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """With skip_invalid the bad row is counted and the others are delivered."""
    rows = [*many_rows(3), {"email": "bad@", "name": "X", "first_name": "X"}]
    files = make_campaign(tmp_path, rows)
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server), skip_invalid=True)
    assert (summary.sent, summary.invalid, summary.exit_code) == (3, 1, ExitCode.OK)
    assert len(recorder.messages) == 3


def test_permanent_rejection_is_recorded_and_the_batch_goes_on(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A 550 on RCPT marks that recipient failed with its code; the rest are sent; exit 1."""
    recorder.rcpt_replies["bob@example.org"] = "550 5.1.1 no such user"
    files = make_campaign(tmp_path)
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert summary.exit_code == ExitCode.REJECTED
    assert (summary.sent, summary.failed) == (2, 1)
    failure = summary.failures[0]
    assert (failure.email, failure.code, failure.status) == ("bob@example.org", 550, "failed")
    assert "no such user" in failure.reply
    assert sorted(recorder.recipients()) == ["ann@example.com", "chloe@example.net"]
    assert recorder.connections == 1


def test_temporary_rejection_is_deferred(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A 451 after DATA every time: retried twice in the run, then left deferred, exit 75."""
    tries: list[str] = []

    def busy(env: Any) -> str | None:
        if "ann@" in env.rcpt_tos[0]:
            tries.append(env.rcpt_tos[0])
            return "451 4.3.0 try later"
        return None

    recorder.data_reply = busy
    files = make_campaign(tmp_path, extra='retry: {attempts: 3, delay: "20ms"}\n')
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert summary.exit_code == ExitCode.TEMPFAIL
    assert (summary.sent, summary.deferred) == (2, 1)
    assert len(tries) == 3
    assert {f.code for f in summary.failures} == {451}


def test_hangup_after_data_is_unknown_never_resent(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A lost reply after the whole message was sent is 'unknown': not resent, run exits 75."""
    recorder.hangup_after_data = lambda env: env.rcpt_tos == ["user00003@example.com"]
    files = make_campaign(tmp_path, many_rows(6))
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server), sleep=no_sleep)
    assert summary.exit_code == ExitCode.TEMPFAIL
    assert (summary.sent, summary.unknown) == (5, 1)
    assert summary.failures[0].email == "user00003@example.com"
    assert "user00003@example.com" not in recorder.recipients()
    assert len(recorder.recipients()) == 5
    assert summary.connections == 2  # reconnected once after the hang-up


def test_limit_sends_only_the_first_n(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """limit=N stops after N messages."""
    files = make_campaign(tmp_path, many_rows(10))
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server), limit=4)
    assert summary.sent == 4
    assert recorder.recipients() == [f"user{i:05d}@example.com" for i in range(1, 5)]


def test_closed_port_is_unavailable(tmp_path: Path) -> None:
    """Nothing listening: UnavailableError (exit 69) naming host and port."""
    server = SmtpServer(Recorder()).start()
    port = server.port
    server.stop()
    files = make_campaign(tmp_path)
    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=2)
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}") as info:
        send_batch(load_campaign(files.yaml), SmtpTransport(settings))
    assert info.value.exit_code == ExitCode.UNAVAILABLE


def test_dry_run_builds_every_row_and_connects_nowhere(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A dry run counts and builds all rows even with SMTP settings present, and opens nothing."""
    files = make_campaign(
        tmp_path,
        many_rows(50),
        extra=f"smtp: {{host: 127.0.0.1, port: {smtp_server.port}, security: none}}\n",
    )
    summary = dry_run(load_campaign(files.yaml))
    assert (summary.total, summary.would_send, summary.connections) == (50, 50, 0)
    assert summary.bytes > 50 * 300
    assert recorder.peers == []
    assert not (tmp_path / ".mailcli").exists()


def test_rate_limiter_spaces_sends_at_the_rate() -> None:
    """At 20/s, consecutive sends are never closer than 50 ms, on an injected clock."""
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(Rate(count=20, per_s=1), clock=lambda: now[0], sleep=sleep)
    times = []
    for _ in range(41):
        limiter.wait()
        times.append(now[0])
        now[0] += 0.001  # the send itself takes a millisecond
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - 1e-9
    assert times[-1] - times[0] == pytest.approx(2.0 * 1.01, abs=0.01)  # 1% safety spacing
    # any one-second window holds at most 20 (a nanosecond of slack for float rounding)
    assert all(sum(1 for t in times if start <= t < start + 1 - 1e-9) <= 20 for start in times)


def test_pipelining_is_used_when_offered(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """With PIPELINING the transcript shows MAIL, RCPT and DATA written before any reply, and
    the next message's commands right behind the previous message's data; without it, every
    command waits for its reply."""
    from typer.testing import CliRunner

    from mailcli.cli import app

    files = make_campaign(tmp_path, many_rows(5))
    result = CliRunner().invoke(
        app,
        [
            "batch",
            str(files.yaml),
            "--host",
            "127.0.0.1",
            "--port",
            str(smtp_server.port),
            "--security",
            "none",
            "--debug",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [
        line.split(": ", 1)[1] for line in result.stderr.splitlines() if line.startswith("smtp: ")
    ]
    pairs = list(itertools.pairwise(lines))
    back_to_back = [
        (a, b) for a, b in pairs if a.startswith("C: MAIL FROM:") and b.startswith("C: RCPT TO:")
    ]
    after_data = [
        (a, b)
        for a, b in pairs
        if a.startswith("C: <message data") and b.startswith("C: MAIL FROM:")
    ]
    if recorder.pipelining:
        assert len(back_to_back) == 5 and len(after_data) == 4
    else:
        assert back_to_back == [] and after_data == []
    assert len(recorder.messages) == 5


def test_render_cache_is_bounded_and_hands_each_rendering_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pass 1's renderings are kept up to the budget only, and each is reused at most once."""
    from mailcli.batch import RenderCache
    from mailcli.render import Rendered

    monkeypatch.setattr(RenderCache, "MAX_ENTRIES", 2)
    cache = RenderCache()
    rendered = Rendered(subject="s", text="t" * 10, html=None)
    for row in range(1, 6):
        cache.put(row, f"u{row}@example.com", rendered)
    assert cache.take(1, "u1@example.com") is rendered
    assert cache.take(1, "u1@example.com") is None
    assert cache.take(3, "u3@example.com") is None  # past the budget: rendered again later
    monkeypatch.setattr(RenderCache, "MAX_CHARS", 15)
    small = RenderCache()
    small.put(1, "a@example.com", rendered)
    small.put(2, "b@example.com", rendered)  # 11 + 11 characters: over the budget
    assert small.take(2, "b@example.com") is None and small.take(1, "a@example.com")


def test_a_group_the_transport_refuses_before_writing_is_not_left_unknown(
    tmp_path: Path,
) -> None:
    """A transport that refuses a whole group before writing a byte (BadHeaderError) stops the
    run; that group goes back to pending, not `unknown`, and the next run sends it."""
    from mailcli.errors import BadHeaderError
    from mailcli.outbox import Outbox, OutboxTransport
    from mailcli.state import open_state

    class RefusesSecondGroup(OutboxTransport):
        calls = 0

        def send(self, messages: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == 2:
                raise BadHeaderError("the address x contains a line break")
            return super().send(messages, **kwargs)

    files = make_campaign(tmp_path, many_rows(40))
    outbox = Outbox()
    summary = send_batch(load_campaign(files.yaml), RefusesSecondGroup(outbox))
    assert summary.exit_code == 75 and summary.error == "the address x contains a line break"
    assert (summary.sent, summary.unknown, summary.pending) == (32, 0, 8)
    with open_state(load_campaign(files.yaml).state_path, "test-campaign") as state:
        assert state.counts()["unknown"] == 0
    again = send_batch(load_campaign(files.yaml), OutboxTransport(outbox))
    assert (again.sent, again.skipped, again.exit_code) == (8, 32, 0)
    assert len(outbox) == 40 == len({m.envelope_to[0] for m in outbox})


def test_a_deferred_row_is_retried_when_limit_is_reached_and_the_run_ends(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """--limit counts a recipient once: its retry round still runs (no endless loop when the
    limit is reached with a row deferred)."""
    files = make_campaign(tmp_path, many_rows(8), extra="retry: {attempts: 3, delay: 50ms}\n")
    recorder.temp_fail_once.add("user00003@example.com")
    summary = send_batch(load_campaign(files.yaml), connect_to(smtp_server), limit=5)
    assert (summary.sent, summary.deferred, summary.pending) == (5, 0, 3)
    assert summary.exit_code == 75  # three rows left for the next run
    assert sorted(recorder.recipients()) == [f"user0000{i}@example.com" for i in range(1, 6)]


def test_a_stop_in_lock_step_mode_ends_after_the_message_in_flight(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Without PIPELINING the stop is asked before every transaction: the rest of the group is
    reverted to pending, never left unknown, and the next run sends it."""
    recorder.pipelining = False  # a pipelined group (one round trip a message) is finished
    files = make_campaign(tmp_path, many_rows(20))
    summary = send_batch(
        load_campaign(files.yaml), connect_to(smtp_server), stop=lambda: len(recorder.messages) >= 3
    )
    assert (summary.sent, summary.unknown, summary.pending) == (3, 0, 17)
    assert summary.error == "stopped by a signal" and summary.exit_code == 75
    rest = send_batch(load_campaign(files.yaml), connect_to(smtp_server))
    assert (rest.sent, rest.skipped) == (17, 3)
    assert len(recorder.recipients()) == len(set(recorder.recipients())) == 20


def test_a_login_refused_on_reconnect_stops_with_77_and_strands_nobody(
    tmp_path: Path, recorder: Recorder, ca: Any, trust_ca: Path
) -> None:
    """The server hangs up, then refuses the password on the new connection: the run ends with
    the AuthError (exit 77, recorded as such), and the messages not handed over go back to
    pending instead of staying unknown."""
    from conftest import PASSWORD, USER, check_password, start_server

    from mailcli.errors import AuthError
    from mailcli.state import open_state

    logins: list[int] = []

    def first_login_only(*args: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        logins.append(1)
        return (
            check_password(*args) if len(logins) == 1 else AuthResult(success=False, handled=False)
        )

    recorder.hangup_every = 5
    server = start_server(recorder, ca, "starttls", authenticator=first_login_only)
    try:
        files = make_campaign(tmp_path, many_rows(12))
        settings = SmtpSettings(
            host="localhost", port=server.port, security="starttls", username=USER, timeout=10
        )
        transport = SmtpTransport(settings, password=lambda: PASSWORD)
        with pytest.raises(AuthError):
            send_batch(load_campaign(files.yaml), transport, sleep=no_sleep)
    finally:
        server.stop()
    assert len(recorder.messages) == 5
    with open_state(load_campaign(files.yaml).state_path, "test-campaign") as state:
        counts = state.counts()
        last = state.last_run()
    assert (counts["sent"], counts["unknown"]) == (5, 0)
    assert last is not None and last.exit_code == 77
