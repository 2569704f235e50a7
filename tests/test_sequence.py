"""Sequences (`steps:`, issue 18) in the library, with an injected clock: the campaign keys and
their errors, the due rule's pure parts, and runs against a real aiosmtpd server at chosen
moments (a late run keeps the spacing, `if:`, `window:` across zones and a daylight saving
change, removed and suppressed recipients, refusals and deferrals, a step added mid-way) with
`dry_run(at=...)` predicting each run."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import Recorder, connect_to, no_sleep, write_csv

import mailcli
from mailcli.batch import dry_run, send_batch
from mailcli.campaign import load_campaign
from mailcli.delivery import DeliveryStatus
from mailcli.errors import ConfigError, ExitCode, MailcliError
from mailcli.preview import Preview
from mailcli.sandbox import SmtpServer
from mailcli.sequence import load_zone, parse_after, parse_start, parse_window
from mailcli.state import SqliteState
from mailcli.summary import Summary

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def step(name: str, after: str, condition: str | None = None) -> str:
    """One step of `steps:` on one line; its subject names it, so that what the server got
    tells which step it was."""
    cond = f', if: "{condition}"' if condition else ""
    return (
        f'  - {{name: {name}, after: {after}, subject: "[{name}] Hi {{{{ first_name }}}}"{cond}}}\n'
    )


def write_sequence(
    folder: Path,
    rows: list[dict[str, str]],
    steps: str,
    *,
    extra: str = "",
    retry: str = "{attempts: 1}",
) -> Path:
    """A sequence campaign in `folder` (YAML, CSV, one text template); its YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "body.txt.j2").write_text("Hi {{ first_name }}, a step.\n", encoding="utf-8")
    write_csv(folder / "list.csv", rows)
    yaml = folder / "campaign.yaml"
    yaml.write_text(
        textwrap.dedent(f"""\
        name: seq-{folder.name}
        from: "Test Sender <sender@example.com>"
        text: body.txt.j2
        recipients: list.csv
        retry: {retry}
        """)
        + textwrap.dedent(extra)
        + "steps:\n"
        + steps,
        encoding="utf-8",
    )
    return yaml


def row(email: str, **columns: str) -> dict[str, str]:
    return {"email": email, "first_name": email.split("@")[0].title(), **columns}


@dataclass
class Runner:
    """Runs a campaign file at chosen moments against the test server, and tells which
    (address, step) pairs each run delivered."""

    yaml: Path
    server: SmtpServer
    recorder: Recorder

    def run(self, at: datetime, **options: object) -> tuple[Summary, set[tuple[str, str]]]:
        before = len(self.recorder.messages)
        summary = send_batch(
            load_campaign(self.yaml),
            connect_to(self.server),
            sleep=no_sleep,
            clock=lambda: at,
            **options,  # type: ignore[arg-type]
        )
        got = [
            (rcpt, _step_of(m.message["Subject"]))
            for m in self.recorder.messages[before:]
            for rcpt in m.rcpt_tos
        ]
        assert len(got) == len(set(got)), f"a step went twice to someone: {got}"
        return summary, set(got)

    def dry(self, at: datetime) -> tuple[Summary, set[tuple[str, str]]]:
        previews: list[Preview] = []
        summary = dry_run(load_campaign(self.yaml), at=at, on_message=previews.append)
        assert all(p.step is not None for p in previews)
        return summary, {(p.email, str(p.step)) for p in previews}


def _step_of(subject: str) -> str:
    assert subject.startswith("["), subject
    return subject[1 : subject.index("]")]


def records(yaml: Path, email: str) -> dict[str, DeliveryStatus]:
    """What the campaign's state holds of each step for one address."""
    state = SqliteState.read_only(load_campaign(yaml).state_path)
    assert state is not None
    try:
        return {name: t.entry.status for name, t in state.step_records(email).items()}
    finally:
        state.close()


# --- 1. parsing and validation ------------------------------------------------------------

TOP = 'subject: "Hi"\n'


@pytest.mark.parametrize(
    ("tail", "line", "words"),
    [
        pytest.param(
            TOP + "steps:\n" + '  - {name: a, after: "2 days"}\n', 7, "after", id="2 days"
        ),
        pytest.param(TOP + "steps:\n" + '  - {name: a, after: "-1d"}\n', 7, "after", id="-1d"),
        pytest.param(
            TOP + "steps:\n  - {name: a, after: 1d}\n  - {name: b, after: 24h}\n",
            8,
            "out of order",
            id="equal after",
        ),
        pytest.param(
            TOP + "steps:\n  - {name: a, after: 2d}\n  - {name: b, after: 1d}\n",
            8,
            "out of order",
            id="decreasing after",
        ),
        pytest.param(
            TOP + "steps:\n  - {name: a, after: 0d}\n  - {name: a, after: 1d}\n",
            8,
            "twice",
            id="duplicate name",
        ),
        pytest.param(
            TOP + "timezone: Mars/Olympus\nsteps:\n  - {name: a, after: 0d}\n",
            6,
            "Mars/Olympus",
            id="unknown zone",
        ),
        pytest.param(
            TOP + 'window: "9-17"\nsteps:\n  - {name: a, after: 0d}\n', 6, "window", id="9-17"
        ),
        pytest.param(
            TOP + 'window: "17:00-17:00"\nsteps:\n  - {name: a, after: 0d}\n',
            6,
            "window",
            id="empty window",
        ),
        pytest.param(TOP + 'start: "{{ signed_up_at }}"\n', 6, "steps", id="start without steps"),
        pytest.param(
            TOP + "steps:\n" + '  - {name: a, after: 0d, if: "plan =="}\n',
            7,
            "Jinja",
            id="if syntax",
        ),
        pytest.param("steps:\n  - {name: a, after: 0d}\n", 6, "subject", id="no subject"),
        pytest.param(
            TOP + "steps:\n  - {name: a, after: 0d, subjcet: Hi}\n", 7, "subjcet", id="unknown key"
        ),
    ],
)
def test_a_bad_sequence_is_a_config_error_naming_its_line(
    tmp_path: Path, tail: str, line: int, words: str
) -> None:
    (tmp_path / "body.txt.j2").write_text("Hi\n", encoding="utf-8")
    write_csv(tmp_path / "list.csv", [row("ann@example.com")])
    yaml = tmp_path / "campaign.yaml"
    yaml.write_text(
        'name: bad\nfrom: "S <s@example.com>"\ntext: body.txt.j2\nrecipients: list.csv\n' + tail,
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_campaign(yaml)
    error = caught.value
    assert (error.line, error.exit_code) == (line, ExitCode.CONFIG), str(error)
    assert error.path is not None and error.path.endswith("campaign.yaml")
    assert words in error.message


def test_a_good_sequence_loads_with_what_each_step_says(tmp_path: Path) -> None:
    yaml = write_sequence(
        tmp_path / "ok",
        [row("ann@example.com")],
        step("welcome", "0d") + step("tips", "1d12h", "plan == 'free'") + step("offer", "1w"),
        extra='start: "{{ signed_up_at }}"\ntimezone: Europe/Paris\nwindow: "22:00-06:00"\n',
    )
    campaign = load_campaign(yaml)
    assert campaign.is_sequence
    assert [(s.name, s.after.days, s.after.seconds) for s in campaign.steps] == [
        ("welcome", 0, 0),
        ("tips", 1, 12 * 3600),
        ("offer", 7, 0),
    ]
    assert campaign.steps[1].condition == "plan == 'free'"
    assert campaign.window is not None and campaign.window.start == time(22, 0)
    assert (campaign.start, campaign.timezone) == ("{{ signed_up_at }}", "Europe/Paris")


def test_a_row_whose_start_or_zone_does_not_work_is_an_invalid_row(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    rows = [
        row("ann@example.com", signed_up_at="2026-03-01", tz="Europe/Paris"),
        row("bob@example.com", signed_up_at="next tuesday", tz="Europe/Paris"),
        row("cat@example.com", signed_up_at="2026-03-01", tz="Mars/Olympus"),
        row("dan@example.com", signed_up_at="2026-03-01T09:30", tz="America/New_York"),
    ]
    yaml = write_sequence(
        tmp_path / "rows",
        rows,
        step("welcome", "0d") + step("tips", "2d"),
        extra='start: "{{ signed_up_at }}"\ntimezone: "{{ tz }}"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    # Whether a step is due or not: a row whose clock cannot be read is invalid all the same.
    for moment in (utc(2026, 2, 1), utc(2026, 3, 2)):
        dry, _ = runner.dry(moment)
        assert dry.exit_code == ExitCode.DATAERR
        assert [p.row for p in dry.problems] == [2, 3]
        assert "next tuesday" in dry.problems[0].problem
        assert "Mars/Olympus" in dry.problems[1].problem

    summary, sent = runner.run(utc(2026, 3, 2))
    assert summary.exit_code == ExitCode.DATAERR
    assert [p.row for p in summary.problems] == [2, 3]
    assert sent == set() and recorder.peers == []


# --- 2. the rules -------------------------------------------------------------------------


def test_day_units_keep_the_local_time_across_a_daylight_saving_change() -> None:
    friday = datetime(2026, 3, 27, 9, 0, tzinfo=PARIS)  # 08:00 UTC (CET, +01:00)
    sunday = parse_after("2d").after(friday, PARIS)  # the clocks went forward on the 29th
    assert sunday.astimezone(PARIS).replace(tzinfo=None) == datetime(2026, 3, 29, 9, 0)
    assert sunday == utc(2026, 3, 29, 7, 0)  # CEST, +02:00
    assert parse_after("1w").after(friday, PARIS) == utc(2026, 4, 3, 7, 0)
    # A local time the change skipped comes out as the clocks show it, an hour later.
    night = datetime(2026, 3, 28, 2, 30, tzinfo=PARIS)
    assert parse_after("1d").after(night, PARIS) == utc(2026, 3, 29, 1, 30)  # 03:30 CEST


@pytest.mark.parametrize(
    ("after", "start", "expected"),
    [
        # 48 hours from Friday 09:00 CET (08:00 UTC) are Sunday 08:00 UTC, 10:00 CEST.
        ("48h", utc(2026, 3, 27, 8, 0), utc(2026, 3, 29, 8, 0)),
        # 2 hours from 01:00 CET, across the skipped hour (02:00 becomes 03:00).
        ("2h", utc(2026, 3, 29, 0, 0), utc(2026, 3, 29, 2, 0)),
        ("90m", utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 2, 0)),
        # Days on the calendar, then the hours as elapsed time.
        ("1d12h", utc(2026, 3, 28, 0, 0), utc(2026, 3, 29, 12, 0)),
    ],
)
def test_hour_and_minute_units_are_elapsed_time(
    after: str, start: datetime, expected: datetime
) -> None:
    assert parse_after(after).after(start, PARIS) == expected
    assert parse_after(after).after(start, UTC) == start + timedelta(
        days=parse_after(after).days, seconds=parse_after(after).seconds
    )


def test_after_accepts_durations_and_refuses_anything_else() -> None:
    assert (parse_after("0").days, parse_after("0d").seconds) == (0, 0)
    assert (parse_after("1d12h").days, parse_after("1d12h").seconds) == (1, 43200)
    assert parse_after("2w").days == 14
    for bad in ("2 days", "-1d", "1.5d", "5", "", "d", True, None, "1d extra"):
        with pytest.raises(ValueError):
            parse_after(bad)


def test_a_window_is_half_open_and_may_wrap_past_midnight() -> None:
    day = parse_window("09:00-17:00")
    assert time(9, 0) in day and time(16, 59) in day
    assert time(17, 0) not in day and time(8, 59) not in day and time(0, 0) not in day

    night = parse_window("22:00-06:00")
    assert time(22, 0) in night and time(23, 59) in night and time(0, 0) in night
    assert time(5, 59) in night
    assert time(6, 0) not in night and time(21, 59) not in night and time(12, 0) not in night

    until_midnight = parse_window("18:00-24:00")
    assert time(23, 59) in until_midnight and time(0, 0) not in until_midnight

    for bad in ("9-17", "17:00-17:00", "09:00", "25:00-26:00", "09:60-17:00", "00:00-24:00", 9):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_a_window_opens_at_its_next_local_start() -> None:
    day = parse_window("09:00-17:00")
    inside = utc(2026, 3, 27, 10, 0)  # 11:00 in Paris
    assert day.opens(inside, PARIS) == inside
    assert day.opens(utc(2026, 3, 27, 6, 0), PARIS) == utc(2026, 3, 27, 8, 0)  # today 09:00 CET
    # At 17:00 the window has closed: tomorrow 09:00, which is CEST after the change.
    assert day.opens(utc(2026, 3, 28, 16, 0), PARIS) == utc(2026, 3, 29, 7, 0)
    assert day.opens(utc(2026, 3, 7, 23, 0), NEW_YORK) == utc(2026, 3, 8, 13, 0)  # 09:00 EDT

    night = parse_window("22:00-06:00")
    assert night.opens(utc(2026, 1, 10, 3, 0), UTC) == utc(2026, 1, 10, 3, 0)
    assert night.opens(utc(2026, 1, 10, 6, 0), UTC) == utc(2026, 1, 10, 22, 0)


def test_a_start_is_a_local_date_or_date_time_unless_it_says_its_offset() -> None:
    assert parse_start("2026-03-29", PARIS) == utc(2026, 3, 28, 23, 0)
    assert parse_start("2026-03-30T09:00", PARIS) == utc(2026, 3, 30, 7, 0)
    assert parse_start("2026-03-30T09:00:00Z", PARIS) == utc(2026, 3, 30, 9, 0)
    assert parse_start(" 2026-03-30T09:00-04:00 ", PARIS) == utc(2026, 3, 30, 13, 0)
    for bad in ("", "  ", "next tuesday", "2026-13-01", "30/03/2026"):
        with pytest.raises(ValueError):
            parse_start(bad, PARIS)


def test_zones_are_iana_names() -> None:
    assert load_zone("Europe/Paris") == PARIS
    for bad in ("Mars/Olympus", "", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(ValueError):
            load_zone(bad)


# --- 3. a late run keeps the spacing --------------------------------------------------------


def test_a_run_three_days_late_sends_step_two_and_step_three_keeps_its_spacing(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "late",
        [row("ann@example.com", signed_up_at="2026-03-02")],
        step("welcome", "0d") + step("tips", "2d") + step("offer", "7d"),
        extra='start: "{{ signed_up_at }}"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    ann = "ann@example.com"

    summary, sent = runner.run(utc(2026, 3, 2, 10, 0))  # day 0
    assert sent == {(ann, "welcome")}
    assert summary.exit_code == ExitCode.OK
    assert summary.steps is not None and summary.steps["welcome"]["sent"] == 1
    assert summary.steps["tips"]["sent"] == summary.steps["offer"]["sent"] == 0

    # Day 5, three days late for tips (due day 2) and two before offer's day 7: tips only.
    summary, sent = runner.run(utc(2026, 3, 7, 10, 0))
    assert sent == {(ann, "tips")}
    assert summary.steps is not None
    assert (summary.steps["tips"]["sent"], summary.steps["offer"]["sent"]) == (1, 0)
    assert summary.exit_code == ExitCode.OK

    # Day 7: offer's own day, but only two of its five days' spacing after tips went.
    connections = recorder.connections
    summary, sent = runner.run(utc(2026, 3, 9, 10, 0))
    assert sent == set()
    assert summary.steps is not None and summary.steps["offer"]["waiting"] == 1
    assert (summary.sent, summary.exit_code) == (0, ExitCode.OK)  # not due is not "left over"
    summary, sent = runner.run(utc(2026, 3, 12, 9, 59))
    assert sent == set() and summary.exit_code == ExitCode.OK
    assert recorder.connections == connections  # nothing due: the server is left alone

    # Day 10 (five days after tips went at day 5, 10:00): offer.
    summary, sent = runner.run(utc(2026, 3, 12, 10, 0))
    assert sent == {(ann, "offer")}
    assert summary.steps is not None and summary.steps["offer"]["sent"] == 1

    summary, sent = runner.run(utc(2026, 4, 30))
    assert sent == set() and summary.exit_code == ExitCode.OK
    assert summary.steps is not None
    assert all(n == 0 for counts in summary.steps.values() for n in counts.values())
    assert [_step_of(m.message["Subject"]) for m in recorder.messages] == [
        "welcome",
        "tips",
        "offer",
    ]
    assert records(yaml, ann) == dict.fromkeys(("welcome", "tips", "offer"), DeliveryStatus.SENT)


def test_one_step_per_recipient_per_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "one",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("nudge", "1m"),
        extra='start: "2026-03-02T10:00:00Z"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    both_due = utc(2026, 3, 2, 10, 5)
    summary, sent = runner.run(both_due)
    assert sent == {("ann@example.com", "welcome"), ("bob@example.com", "welcome")}
    assert summary.steps is not None and summary.steps["nudge"]["sent"] == 0
    # Run again at the same moment: nudge keeps its minute after welcome.
    assert runner.run(both_due)[1] == set()
    summary, sent = runner.run(both_due + timedelta(minutes=1))
    assert sent == {("ann@example.com", "nudge"), ("bob@example.com", "nudge")}


def test_spacing_counts_from_the_minute_a_step_went_so_cron_finds_it_due(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A cron run at 10:00 sends its welcome a few seconds into the minute; the run at 10:00
    two days later sends tips, rather than waiting for the next cron run."""
    yaml = write_sequence(
        tmp_path / "cron",
        [row("ann@example.com")],
        step("welcome", "0d") + step("tips", "2d"),
        extra='start: "2026-03-02T10:00:00Z"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert runner.run(datetime(2026, 3, 2, 10, 0, 40, tzinfo=UTC))[1] == {
        ("ann@example.com", "welcome")
    }
    assert runner.run(utc(2026, 3, 4, 9, 59))[1] == set()
    assert runner.run(utc(2026, 3, 4, 10, 0))[1] == {("ann@example.com", "tips")}


def test_without_start_a_sequence_starts_when_a_run_first_meets_the_row(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    folder = tmp_path / "met"
    yaml = write_sequence(
        folder, [row("ann@example.com")], step("welcome", "0d") + step("tips", "1d")
    )
    runner = Runner(yaml, smtp_server, recorder)
    t0 = utc(2026, 5, 4, 8, 0)
    assert runner.run(t0)[1] == {("ann@example.com", "welcome")}
    write_csv(folder / "list.csv", [row("ann@example.com"), row("bob@example.com")])
    assert runner.run(t0 + timedelta(hours=12))[1] == {("bob@example.com", "welcome")}
    assert runner.run(t0 + timedelta(days=1))[1] == {("ann@example.com", "tips")}
    assert runner.run(t0 + timedelta(days=1, hours=12))[1] == {("bob@example.com", "tips")}


# --- 4. if: and window: ---------------------------------------------------------------------


def test_if_skips_a_step_for_rows_that_fail_it_and_the_next_step_still_comes(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    folder = tmp_path / "cond"
    free, paid = "free@example.com", "paid@example.com"
    rows = [row(free, plan="free", day="2026-03-02"), row(paid, plan="paid", day="2026-03-03")]
    yaml = write_sequence(
        folder,
        rows,
        step("welcome", "0d") + step("offer", "2d", "plan == 'free'") + step("bye", "4d"),
        extra='start: "{{ day }}"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert runner.run(utc(2026, 3, 2, 9))[1] == {(free, "welcome")}
    assert runner.run(utc(2026, 3, 3, 9))[1] == {(paid, "welcome")}
    summary, sent = runner.run(utc(2026, 3, 4, 9))
    assert sent == {(free, "offer")}
    assert summary.steps is not None and summary.steps["offer"]["waiting"] == 1  # paid's

    # Paid's offer comes due and its `if:` is false: skipped (the run's only doing), and bye
    # is looked at at once, still 4 days after welcome, the last step that went.
    summary, sent = runner.run(utc(2026, 3, 5, 9))
    assert sent == set()
    assert summary.steps is not None
    assert (summary.steps["offer"]["sent"], summary.steps["offer"]["skipped"]) == (0, 1)
    assert summary.steps["bye"]["waiting"] == 2
    assert summary.exit_code == ExitCode.OK
    assert records(yaml, paid) == {
        "welcome": DeliveryStatus.SENT,
        "offer": DeliveryStatus.SKIPPED,
    }

    assert runner.run(utc(2026, 3, 6, 9))[1] == {(free, "bye")}  # 2 days after offer

    # The plan changes before bye: a skipped step is never sent later.
    write_csv(folder / "list.csv", [rows[0], {**rows[1], "plan": "free"}])
    assert runner.run(utc(2026, 3, 7, 8, 59))[1] == set()
    summary, sent = runner.run(utc(2026, 3, 7, 9))
    assert sent == {(paid, "bye")}
    assert summary.steps is not None and summary.steps["offer"]["skipped"] == 0
    assert runner.run(utc(2026, 4, 1))[1] == set()
    assert Counter(recorder.recipients()) == {free: 3, paid: 2}


def test_a_window_holds_a_due_step_until_local_hours_in_two_zones_across_dst(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """New York moves its clocks on 8 March 2026, Paris on 29 March. Each recipient's welcome
    comes due at 20:00 local, the evening before the change, and waits for 09:00; tips (12 h
    later) comes due at 21:00 local and waits overnight, across the change, for 09:00 again: the
    same local hour at a different UTC hour."""
    ny, paris = "ny@example.com", "paris@example.com"
    rows = [
        row(ny, signed_up_at="2026-03-06T20:00", tz="America/New_York"),
        row(paris, signed_up_at="2026-03-27T20:00", tz="Europe/Paris"),
    ]
    yaml = write_sequence(
        tmp_path / "window",
        rows,
        step("welcome", "0d") + step("tips", "12h"),
        extra='start: "{{ signed_up_at }}"\ntimezone: "{{ tz }}"\nwindow: "09:00-17:00"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)

    def counts(summary: Summary, name: str) -> tuple[int, int, int]:
        assert summary.steps is not None
        c = summary.steps[name]
        return c["sent"], c["held"], c["waiting"]

    # 7 March, 08:59 EST: New York's welcome is held, Paris's is weeks away.
    summary, sent = runner.run(utc(2026, 3, 7, 13, 59))
    assert sent == set() and counts(summary, "welcome") == (0, 1, 1)
    assert summary.exit_code == ExitCode.OK  # held is not "left over"
    assert runner.run(utc(2026, 3, 7, 14, 0))[1] == {(ny, "welcome")}  # 09:00 EST
    # Tips came due at 21:00 EST; it is held through the night and the change at 02:00.
    summary, sent = runner.run(utc(2026, 3, 8, 7, 0))
    assert sent == set() and counts(summary, "tips") == (0, 1, 0)
    assert runner.run(utc(2026, 3, 8, 12, 59))[1] == set()  # 08:59 EDT
    assert runner.run(utc(2026, 3, 8, 13, 0))[1] == {(ny, "tips")}  # 09:00 EDT: UTC-4 now

    # Paris, the same across its own change.
    summary, sent = runner.run(utc(2026, 3, 28, 7, 59))  # 08:59 CET
    assert sent == set() and counts(summary, "welcome") == (0, 1, 0)
    assert runner.run(utc(2026, 3, 28, 8, 0))[1] == {(paris, "welcome")}  # 09:00 CET
    assert runner.run(utc(2026, 3, 28, 16, 0))[1] == set()  # 17:00 CET: closed (and not due)
    assert runner.run(utc(2026, 3, 29, 6, 59))[1] == set()  # 08:59 CEST
    assert runner.run(utc(2026, 3, 29, 7, 0))[1] == {(paris, "tips")}  # 09:00 CEST: UTC+2
    assert len(recorder.messages) == 4


def test_an_hour_step_keeps_its_elapsed_time_across_the_change_in_a_run(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Paris skips 02:00-03:00 on 29 March 2026: two hours after 01:30 CET is 04:30 CEST."""
    yaml = write_sequence(
        tmp_path / "hours",
        [row("ann@example.com")],
        step("welcome", "0d") + step("nudge", "2h"),
        extra='start: "2026-03-29T01:30"\ntimezone: Europe/Paris\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert runner.run(utc(2026, 3, 29, 0, 30))[1] == {("ann@example.com", "welcome")}
    assert runner.run(utc(2026, 3, 29, 1, 30))[1] == set()  # one hour has passed
    assert runner.run(utc(2026, 3, 29, 2, 29))[1] == set()
    assert runner.run(utc(2026, 3, 29, 2, 30))[1] == {("ann@example.com", "nudge")}


# --- 5. removed and suppressed recipients ---------------------------------------------------


def test_a_recipient_removed_from_the_list_gets_no_further_step(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    folder = tmp_path / "removed"
    yaml = write_sequence(
        folder,
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "1d") + step("offer", "2d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert len(runner.run(utc(2026, 3, 2, 9))[1]) == 2
    write_csv(folder / "list.csv", [row("ann@example.com")])
    summary, sent = runner.run(utc(2026, 3, 3, 9))
    assert sent == {("ann@example.com", "tips")}
    assert (summary.total, summary.exit_code) == (1, ExitCode.OK)
    assert runner.run(utc(2026, 3, 4, 9))[1] == {("ann@example.com", "offer")}
    assert "bob@example.com" not in {r for m in recorder.messages[2:] for r in m.rcpt_tos}


def test_a_suppressed_recipient_gets_no_further_step_and_is_counted(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "suppressed",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "1d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert len(runner.run(utc(2026, 3, 2, 9))[1]) == 2
    blocklist = mailcli.suppression_list()
    assert blocklist.add("BOB@example.com", mailcli.SuppressionReason.UNSUBSCRIBED)
    blocklist.close()

    dry, predicted = runner.dry(utc(2026, 3, 3, 9))
    assert predicted == {("ann@example.com", "tips")}
    assert dry.steps is not None and dry.steps["tips"]["suppressed"] == 1
    for day in (3, 10):
        summary, sent = runner.run(utc(2026, 3, day, 9))
        assert sent == ({("ann@example.com", "tips")} if day == 3 else set())
        assert summary.suppressed == 1 and summary.exit_code == ExitCode.OK
        assert summary.steps is not None and summary.steps["tips"]["suppressed"] == 1
    assert records(yaml, "bob@example.com") == {"welcome": DeliveryStatus.SENT}


# --- 7. refusals and deferrals --------------------------------------------------------------


def test_a_refused_step_ends_the_sequence_for_that_recipient(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "refused",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "2d") + step("offer", "4d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    recorder.rcpt_replies["bob@example.com"] = "550 5.1.1 no such user"
    summary, sent = runner.run(utc(2026, 3, 2, 9))
    assert sent == {("ann@example.com", "welcome")}
    assert summary.steps is not None and summary.steps["welcome"]["failed"] == 1
    assert summary.exit_code == ExitCode.REJECTED

    recorder.rcpt_replies.clear()  # the server would take it now; the sequence stays ended
    for day in (4, 6, 30):
        assert runner.run(utc(2026, 3, day, 9))[1] <= {
            ("ann@example.com", "tips"),
            ("ann@example.com", "offer"),
        }
    assert "bob@example.com" not in recorder.recipients()
    assert Counter(recorder.recipients())["ann@example.com"] == 3
    assert records(yaml, "bob@example.com") == {"welcome": DeliveryStatus.FAILED}

    # Fixed upstream: --resend-failed sends the refused step, and the sequence goes on from it.
    summary, sent = runner.run(utc(2026, 4, 1, 9), resend_failed=True)
    assert sent == {("bob@example.com", "welcome")}
    assert runner.run(utc(2026, 4, 3, 8, 59))[1] == set()
    assert runner.run(utc(2026, 4, 3, 9))[1] == {("bob@example.com", "tips")}


def test_a_deferred_step_is_sent_by_the_next_run_and_the_next_step_keeps_its_spacing(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "deferred",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "2d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    recorder.rcpt_replies["bob@example.com"] = "451 4.7.1 greylisted, try again later"
    summary, sent = runner.run(utc(2026, 3, 2, 10))
    assert sent == {("ann@example.com", "welcome")}
    assert summary.steps is not None and summary.steps["welcome"]["deferred"] == 1
    assert summary.exit_code == ExitCode.TEMPFAIL

    recorder.rcpt_replies.clear()
    summary, sent = runner.run(utc(2026, 3, 2, 11))
    assert sent == {("bob@example.com", "welcome")}  # the same step again
    assert summary.exit_code == ExitCode.OK

    # Tips: two days after each one's welcome went (10:00 for ann, 11:00 for bob).
    assert runner.run(utc(2026, 3, 4, 10, 30))[1] == {("ann@example.com", "tips")}
    assert runner.run(utc(2026, 3, 4, 11))[1] == {("bob@example.com", "tips")}


def test_a_step_deferred_then_accepted_in_the_same_run_counts_as_sent(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "retried",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "1d"),
        extra='start: "2026-03-02"\n',
        retry='{attempts: 2, delay: "50ms"}',
    )
    recorder.temp_fail_once.add("bob@example.com")
    summary, sent = Runner(yaml, smtp_server, recorder).run(utc(2026, 3, 2, 9))
    assert sent == {("ann@example.com", "welcome"), ("bob@example.com", "welcome")}
    assert summary.steps is not None
    assert (summary.steps["welcome"]["sent"], summary.steps["welcome"]["deferred"]) == (2, 0)
    assert (summary.sent, summary.deferred, summary.exit_code) == (2, 0, ExitCode.OK)


def test_an_unknown_step_is_never_resent_and_the_sequence_goes_on_after_it(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "unknown",
        [row("ann@example.com"), row("bob@example.com")],
        step("welcome", "0d") + step("tips", "2d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    # The server reads bob's whole message and hangs up without a reply.
    recorder.hangup_after_data = lambda envelope: "bob@example.com" in envelope.rcpt_tos
    summary, sent = runner.run(utc(2026, 3, 2, 10))
    assert sent == {("ann@example.com", "welcome")}
    assert summary.steps is not None and summary.steps["welcome"]["unknown"] == 1
    assert summary.exit_code == ExitCode.TEMPFAIL
    assert records(yaml, "bob@example.com") == {"welcome": DeliveryStatus.UNKNOWN}

    recorder.hangup_after_data = None
    later, sent = runner.run(utc(2026, 3, 3, 10))
    assert sent == set()  # welcome is not sent again
    # ... and bob stays reported unknown (exit 75) until his next step goes out.
    assert (later.unknown, later.exit_code) == (1, ExitCode.TEMPFAIL)
    assert runner.run(utc(2026, 3, 4, 9, 59))[1] == set()
    # Two days after bob's welcome was handed over (10:00), as for ann.
    tips, sent = runner.run(utc(2026, 3, 4, 10))
    assert sent == {("ann@example.com", "tips"), ("bob@example.com", "tips")}
    assert (tips.unknown, tips.exit_code) == (0, ExitCode.OK)


def test_retry_unknown_never_sends_a_step_after_a_later_one_went_out(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """--retry-unknown sends an unknown step again only while it is the recipient's last: once
    a later step went out, the earlier one stays as it is (steps in order), and the dry run
    with the flag predicts the same."""
    yaml = write_sequence(
        tmp_path / "retry",
        [row("ann@example.com"), row("bob@example.com")],
        step("one", "0d") + step("two", "1d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    recorder.hangup_after_data = lambda envelope: True
    runner.run(utc(2026, 3, 2, 10))
    recorder.hangup_after_data = None
    assert records(yaml, "ann@example.com") == {"one": DeliveryStatus.UNKNOWN}
    # bob's step one is sent again by --retry-unknown; ann has had step two meanwhile.
    _, sent = runner.run(utc(2026, 3, 3, 11))
    assert sent == {("ann@example.com", "two"), ("bob@example.com", "two")}
    at = utc(2026, 3, 4, 11)
    dry = dry_run(load_campaign(yaml), at=at, retry_unknown=True)
    _, sent = runner.run(at, retry_unknown=True)
    assert sent == set() and dry.would_send == 0
    assert records(yaml, "ann@example.com") == {
        "one": DeliveryStatus.UNKNOWN,
        "two": DeliveryStatus.SENT,
    }


def test_retry_unknown_resends_a_last_unknown_step_as_the_dry_run_predicts(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "again",
        [row("ann@example.com")],
        step("one", "0d") + step("two", "2d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    recorder.hangup_after_data = lambda envelope: True
    runner.run(utc(2026, 3, 2, 10))
    recorder.hangup_after_data = None
    at = utc(2026, 3, 2, 12)
    plain = dry_run(load_campaign(yaml), at=at)
    asked = dry_run(load_campaign(yaml), at=at, retry_unknown=True)
    assert (plain.would_send, asked.would_send) == (0, 1)
    summary, sent = runner.run(at, retry_unknown=True)
    assert sent == {("ann@example.com", "one")} and summary.exit_code == ExitCode.OK


@pytest.mark.parametrize(
    ("cell", "zone"), [("9999-12-31", "UTC"), ("0001-01-01", "Asia/Tokyo"), ("1850-01-01", "UTC")]
)
def test_a_start_out_of_range_is_an_invalid_row_not_a_crash(
    tmp_path: Path, cell: str, zone: str
) -> None:
    yaml = write_sequence(
        tmp_path / "range",
        [row("ann@example.com", su="2026-03-02"), row("bob@example.com", su=cell)],
        step("one", "0d") + step("two", "2d"),
        extra=f'start: "{{{{ su }}}}"\ntimezone: {zone}\n',
    )
    summary = dry_run(load_campaign(yaml), at=utc(2026, 3, 2, 12))
    assert summary.exit_code == ExitCode.DATAERR
    assert [(p.row, "out of range" in p.problem) for p in summary.problems] == [(2, True)]


def test_an_after_beyond_a_hundred_years_is_refused(tmp_path: Path) -> None:
    yaml = write_sequence(tmp_path / "far", [row("ann@example.com")], step("one", "99999999999h"))
    with pytest.raises(ConfigError, match="hundred years"):
        load_campaign(yaml)


def test_status_counts_each_step_over_the_list_as_it_is_now_and_exports_per_step(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Per step, `pending` counts the recipients of the list now who have not had the step
    (those who left do not make it smaller); the export has a row per recipient and step."""
    folder = tmp_path / "status"
    yaml = write_sequence(
        folder,
        [row(f"u{i}@example.com") for i in range(4)],
        step("one", "0d") + step("two", "2d"),
        extra='start: "2026-03-02"\n',
    )
    Runner(yaml, smtp_server, recorder).run(utc(2026, 3, 2, 10))
    write_csv(
        folder / "list.csv",
        [row("u2@example.com"), row("u3@example.com"), row("n1@example.com")],
    )
    report = mailcli.campaign_status(yaml).to_json(with_recipients=False)
    assert report["steps"]["one"] == {
        "sent": 4,
        "pending": 1,
        "skipped": 0,
        "failed": 0,
        "deferred": 0,
        "unknown": 0,
    }
    assert report["steps"]["two"]["pending"] == 3
    out = tmp_path / "export.csv"
    mailcli.export_status(yaml, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("email,step,row,status,")
    cells = [line.split(",") for line in lines[1:]]
    had = {(c[0], c[1], c[3]) for c in cells}
    assert ("u0@example.com", "one", "sent") in had
    assert ("n1@example.com", "one", "pending") in had
    assert ("u2@example.com", "two", "pending") in had
    assert not any(step_name == "" for _, step_name, _ in had)


def test_a_state_of_the_other_kind_is_refused_by_runs_and_by_status(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A one-message campaign edited into a sequence under the same name: its run and its
    status are refused (exit 78), and nothing is written to the state first."""
    yaml = write_sequence(
        tmp_path / "kind",
        [row("ann@example.com")],
        step("one", "0d"),
        extra='start: "2026-03-02"\n',
    )
    text = yaml.read_text(encoding="utf-8")
    one_message = text.split("steps:")[0].replace('start: "2026-03-02"\n', "")
    yaml.write_text(one_message + 'subject: "Hi"\n', encoding="utf-8")
    one = load_campaign(yaml)
    assert send_batch(one, connect_to(smtp_server), sleep=no_sleep).sent == 1
    history = SqliteState.read_only(one.state_path)
    assert history is not None
    entries = len(history.fingerprints())
    history.close()
    yaml.write_text(text, encoding="utf-8")
    sequence = load_campaign(yaml)
    with pytest.raises(ConfigError, match="one-message campaign") as refused:
        send_batch(sequence, connect_to(smtp_server), sleep=no_sleep, clock=lambda: utc(2026, 3, 3))
    assert refused.value.exit_code == ExitCode.CONFIG
    with pytest.raises(ConfigError, match="one-message campaign"):
        mailcli.campaign_status(sequence)
    history = SqliteState.read_only(one.state_path)
    assert history is not None
    assert len(history.fingerprints()) == entries  # nothing recorded by the refused run
    history.close()


def test_a_limited_run_leaves_the_rest_of_the_due_steps_for_the_next(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    yaml = write_sequence(
        tmp_path / "limit",
        [row("ann@example.com"), row("bob@example.com"), row("cat@example.com")],
        step("welcome", "0d") + step("tips", "1d"),
        extra='start: "2026-03-02"\n',
    )
    runner = Runner(yaml, smtp_server, recorder)
    summary, sent = runner.run(utc(2026, 3, 2, 9), limit=2)
    assert len(sent) == 2
    assert (summary.pending, summary.exit_code) == (1, ExitCode.TEMPFAIL)
    summary, rest = runner.run(utc(2026, 3, 2, 9, 5), limit=2)
    assert (len(rest), summary.pending, summary.exit_code) == (1, 0, ExitCode.OK)
    assert {email for email, _ in sent | rest} == {
        "ann@example.com",
        "bob@example.com",
        "cat@example.com",
    }


# --- 8. a dry run --at predicts the run ---------------------------------------------------


def test_a_dry_run_at_a_moment_predicts_exactly_what_a_run_then_sends(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    zones = ["Europe/Paris", "America/New_York", "UTC", "Asia/Tokyo"]
    rows = [
        row(
            f"user{i}@example.com",
            signed_up_at=f"2026-03-{1 + i % 9:02d}" + ("T18:30" if i % 3 == 0 else ""),
            tz=zones[i % len(zones)],
            plan="free" if i % 2 else "paid",
        )
        for i in range(12)
    ]
    yaml = write_sequence(
        tmp_path / "predict",
        rows,
        step("welcome", "0d")
        + step("tips", "2d")
        + step("offer", "5d", "plan == 'free'")
        + step("last", "8d"),
        extra='start: "{{ signed_up_at }}"\ntimezone: "{{ tz }}"\nwindow: "08:00-20:00"\n',
    )
    blocklist = mailcli.suppression_list()
    blocklist.add("user5@example.com", mailcli.SuppressionReason.MANUAL)
    blocklist.close()
    runner = Runner(yaml, smtp_server, recorder)
    moments = [utc(2026, 3, 1, 12)] + [
        utc(2026, 3, 2) + timedelta(hours=h) for h in range(0, 24 * 24, 11)
    ]
    everything: set[tuple[str, str]] = set()
    seen: Counter[str] = Counter()  # the counts compared were not all zeros
    for moment in moments:
        dry, predicted = runner.dry(moment)
        assert dry.exit_code == ExitCode.OK
        summary, sent = runner.run(moment)
        assert sent == predicted, moment
        assert summary.sent == dry.would_send == len(sent)
        assert dry.steps is not None and summary.steps is not None
        for name, counts in dry.steps.items():
            real = summary.steps[name]
            assert counts["would_send"] == real["sent"], (moment, name)
            for key in ("skipped", "suppressed", "waiting", "held"):
                assert counts[key] == real[key], (moment, name, key)
                seen[key] += real[key]
        assert not everything & sent
        everything |= sent
    sent_steps = Counter(name for _, name in everything)
    # The schedule went through to the end: every step went to the 11 not suppressed, but
    # offer only to the free plan (5 of them once user5 is left out).
    assert sent_steps == {"welcome": 11, "tips": 11, "offer": 5, "last": 11}
    assert all(seen[key] > 0 for key in ("skipped", "suppressed", "waiting", "held")), seen


# --- 9. a step added to a running sequence ------------------------------------------------


def test_a_step_added_mid_way_is_not_sent_to_those_already_past_it(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    rows = [
        row("early@example.com", signed_up_at="2026-03-01"),
        row("late@example.com", signed_up_at="2026-03-08"),
    ]
    extra = 'start: "{{ signed_up_at }}"\n'
    yaml = write_sequence(
        tmp_path / "edit", rows, step("welcome", "0d") + step("offer", "7d"), extra=extra
    )
    runner = Runner(yaml, smtp_server, recorder)
    assert runner.run(utc(2026, 3, 1, 12))[1] == {("early@example.com", "welcome")}
    assert runner.run(utc(2026, 3, 8, 12))[1] == {
        ("early@example.com", "offer"),
        ("late@example.com", "welcome"),
    }

    write_sequence(
        tmp_path / "edit",
        rows,
        step("welcome", "0d") + step("tips", "3d") + step("offer", "7d"),
        extra=extra,
    )
    summary, sent = runner.run(utc(2026, 3, 11, 12))
    assert sent == {("late@example.com", "tips")}
    assert summary.steps is not None and set(summary.steps) == {"welcome", "tips", "offer"}
    assert runner.run(utc(2026, 3, 15, 11, 59))[1] == set()  # offer: 4 days after tips
    assert runner.run(utc(2026, 3, 15, 12))[1] == {("late@example.com", "offer")}
    assert runner.run(utc(2026, 4, 30))[1] == set()
    assert "tips" not in records(yaml, "early@example.com")
    assert Counter(recorder.recipients()) == {"early@example.com": 2, "late@example.com": 3}


def test_a_moment_without_a_zone_is_local_time_or_refused_never_a_type_error(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """`batch --dry-run --at 2026-03-03T12:00` reads a naive time as this machine's; the
    library's `at=` and `clock=` must either do the same or refuse it as a mailcli error."""
    yaml = write_sequence(
        tmp_path / "naive",
        [row("ann@example.com")],
        step("welcome", "0d") + step("tips", "1d"),
        extra='start: "2026-03-02T10:00:00Z"\n',
    )
    naive = datetime(2026, 3, 2, 12, 0)
    try:
        summary = dry_run(load_campaign(yaml), at=naive)
    except MailcliError:
        pass
    else:
        assert summary.would_send == dry_run(load_campaign(yaml), at=naive.astimezone()).would_send
    try:
        summary = send_batch(
            load_campaign(yaml), connect_to(smtp_server), sleep=no_sleep, clock=lambda: naive
        )
    except MailcliError:
        assert recorder.messages == []
    else:
        assert (summary.sent, summary.exit_code) == (1, ExitCode.OK)
