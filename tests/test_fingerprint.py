"""The campaign's fingerprint: a copied campaign file that kept its `name:` is refused before it
sends anything; an edited or moved campaign goes on with a one-line note; `status` shows the
history. Real files, real runs into aiosmtpd, a real PostgreSQL for the shared state."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Recorder, make_campaign, many_rows, server_args
from typer.testing import CliRunner

import mailcli
from mailcli.campaign import load_campaign
from mailcli.cli import app
from mailcli.fingerprint import Fingerprint, Verdict, compute, describe, judge
from mailcli.pgstate import PgState
from mailcli.sandbox import SmtpServer
from mailcli.state import SqliteState

runner = CliRunner()
REFUSED = "give this campaign its own `name:` (or its own `state:`)"


def cli(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def batch(campaign: Path, server: SmtpServer, *extra: str) -> Any:
    return cli("batch", campaign, *server_args(server), *extra)


def history(campaign: Path) -> list[dict[str, Any]]:
    result = cli("status", campaign, "--json")
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)["fingerprints"]
    assert isinstance(entries, list)
    return entries


def copy_with(original: Path, name: str, old: str, new: str) -> Path:
    """A copy of a campaign file beside it, with one piece of text replaced."""
    text = original.read_text(encoding="utf-8")
    assert old in text
    copy = original.with_name(name)
    copy.write_text(text.replace(old, new), encoding="utf-8")
    return copy


def notes(stderr: str, campaign: str = "test-campaign") -> list[str]:
    return [line for line in stderr.splitlines() if f"campaign '{campaign}'" in line]


# --- the pure pieces ----------------------------------------------------------------------------


def fp(file: str = "/c/campaign.yaml", host: str = "h1", **parts: str | None) -> Fingerprint:
    base: dict[str, str | None] = {
        "from": "f",
        "subject": "s",
        "text": "t",
        "html": None,
        "markdown": None,
    }
    attachments = parts.pop("attachments", None)
    return Fingerprint(
        file, host, {**base, **parts}, tuple((attachments or "").split()) if attachments else ()
    )


@pytest.mark.parametrize(
    ("last", "current", "shared", "gone", "verdict"),
    [
        (None, fp(), False, False, Verdict.FIRST),
        (fp(), fp(), False, False, Verdict.SAME),
        (fp(), fp(host="h2"), False, False, Verdict.SAME),  # SQLite: the host is no sign
        (fp(), fp("/d/campaign.yaml"), False, False, Verdict.MOVED),
        (fp(), fp(subject="s2"), False, False, Verdict.EDITED),
        (fp(), fp("/c/copy.yaml", subject="s2"), False, False, Verdict.CLASH),
        (fp(), fp("/d/campaign.yaml", subject="s2"), False, True, Verdict.EDITED),  # moved+edited
        # PostgreSQL: the same content from any host and path is the same campaign...
        (fp(), fp("/elsewhere/c.yaml", "h2"), True, False, Verdict.SAME),
        # ... an edit only from the host and file that recorded the last one ...
        (fp(), fp(subject="s2"), True, False, Verdict.EDITED),
        (fp(), fp(host="h2", subject="s2"), True, False, Verdict.CLASH),
        (fp(), fp("/d/c.yaml", "h2", subject="s2"), True, False, Verdict.CLASH),
        # ... or from that host when that file is gone there.
        (fp(), fp("/d/c.yaml", subject="s2"), True, True, Verdict.EDITED),
    ],
)
def test_the_verdicts(
    last: Fingerprint | None, current: Fingerprint, shared: bool, gone: bool, verdict: Verdict
) -> None:
    """Every case of the rule, for a SQLite state and for a shared (PostgreSQL) one."""
    assert judge(last, current, shared=shared, last_file_gone=gone) is verdict


def test_describe_names_each_part_that_changed() -> None:
    """One phrase per part, in a fixed order; attachments by name, added (+) and gone (-)."""
    before = fp(attachments="a.pdf b.pdf")
    after = fp(**{"from": "f2"}, subject="s2", text=None, markdown="m", attachments="b.pdf c.pdf")
    assert describe(before, after) == [
        "from changed",
        "subject changed",
        "text template removed",
        "Markdown template added",
        "attachments changed: +c.pdf -a.pdf",
    ]
    assert describe(before, before) == []
    assert before.digest != after.digest and before.digest == fp(attachments="b.pdf a.pdf").digest


def test_the_fingerprint_covers_sender_subject_templates_and_attachment_names(
    tmp_path: Path,
) -> None:
    """Each of them makes a difference; vars, the list and the state's path do not."""
    files = make_campaign(tmp_path / "camp", extra="attachments: [a.pdf]\n")
    (files.folder / "a.pdf").write_bytes(b"%PDF-1.4\n")
    first = compute(load_campaign(files.yaml))
    assert first.file == str(files.yaml.resolve()) and first.attachments == ("a.pdf",)
    files.write_rows(many_rows(5))
    (files.folder / "a.pdf").write_bytes(b"%PDF-1.4 other\n")  # the names count, not the bytes
    assert compute(load_campaign(files.yaml)).digest == first.digest
    (files.folder / "body.html.j2").write_text("<p>new</p>\n", encoding="utf-8")
    assert describe(first, compute(load_campaign(files.yaml))) == ["HTML template changed"]
    without_from = files.yaml.read_text(encoding="utf-8").replace(
        'from: "Test Sender <sender@example.com>"\n', ""
    )
    files.yaml.write_text(without_from, encoding="utf-8")
    profile = compute(load_campaign(files.yaml), sender="Relay <relay@acme.example>")
    assert "from changed" in describe(first, profile)


# --- SQLite: one folder, two campaign files -------------------------------------------------


def test_two_campaign_files_with_one_name_in_one_folder_refuse_the_second(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The issue's case: a copy of campaign.yaml with a new subject and the old name shares the
    old state. Its run exits 78 with one line naming both files, and sends nothing (and so
    does its dry run); the first campaign goes on as before."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    assert len(recorder.messages) == 3
    copy = copy_with(files.yaml, "summer.yaml", "Hello {{ first_name }}", "Summer sale")

    refused = batch(copy, smtp_server)
    assert refused.exit_code == 78, refused.output
    [line] = [line for line in refused.stderr.splitlines() if REFUSED in line]
    assert str(copy.resolve()) in line and str(files.yaml.resolve()) in line
    assert "subject changed" in line and "nothing was sent" in line
    assert len(recorder.messages) == 3

    dry = cli("batch", copy, "--dry-run")
    assert dry.exit_code == 78 and REFUSED in dry.stderr
    as_json = batch(copy, smtp_server, "--json")
    assert as_json.exit_code == 78 and json.loads(as_json.stdout)["exit_code"] == 78

    with pytest.raises(mailcli.ConfigError, match="its own `name:`"):
        mailcli.send_campaign(copy, mailcli.Mailer("127.0.0.1", smtp_server.port, "none"))
    with mailcli.record_messages() as outbox, pytest.raises(mailcli.ConfigError):
        mailcli.send_campaign(copy)  # a trial into the outbox says what the real run would
    assert outbox == [] and len(recorder.messages) == 3

    again = batch(files.yaml, smtp_server, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 3
    assert [e["changes"] for e in history(files.yaml)] == [["first recorded"]]


def test_a_copy_with_its_own_name_has_its_own_state_and_sends_to_everyone(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """What the refusal asks for works: renamed, the copy is a campaign of its own."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    copy = copy_with(files.yaml, "summer.yaml", "name: test-campaign", "name: summer")
    summary = json.loads(batch(copy, smtp_server, "--json").stdout)
    assert (summary["sent"], summary["exit_code"]) == (3, 0)
    assert len(recorder.messages) == 6


def test_an_identical_copy_beside_it_goes_on_with_a_note(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """Same content from another file is the same campaign: nothing is resent, the new path is
    recorded with a one-line note."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    twin = copy_with(files.yaml, "twin.yaml", "name:", "name:")
    result = batch(twin, smtp_server, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == 3 and len(recorder.messages) == 3
    [note] = notes(result.stderr)
    assert f"now runs from {twin.resolve()}" in note and "same content" in note
    assert history(files.yaml)[-1]["changes"] == [f"moved from {files.yaml.resolve()}"]


# --- SQLite: the same file, edited ----------------------------------------------------------


def test_an_edit_of_the_same_file_runs_with_a_note_naming_what_changed(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A fixed subject and an edited text template (a drip campaign's next message): the run
    goes on, with one line naming both changes; those done before are not sent again, the row
    appended since gets the new version. A run after that says nothing."""
    files = make_campaign(tmp_path / "camp", many_rows(3))
    assert batch(files.yaml, smtp_server).exit_code == 0
    copy_with(files.yaml, files.yaml.name, "Hello {{ first_name }}", "Hello again {{ first_name }}")
    (files.folder / "body.txt.j2").write_text("Hi {{ first_name }}, news.\n", encoding="utf-8")
    files.write_rows(many_rows(4))

    result = batch(files.yaml, smtp_server, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 1
    [note] = notes(result.stderr)
    assert note == (
        f"campaign 'test-campaign' ({files.yaml.resolve()}): subject changed, text template "
        "changed since its last run"
    )
    assert recorder.messages[-1].message["Subject"] == "Hello again U4"
    assert len(recorder.messages) == 4

    quiet = batch(files.yaml, smtp_server)
    assert quiet.exit_code == 0 and notes(quiet.stderr) == []
    assert [e["changes"] for e in history(files.yaml)] == [
        ["first recorded"],
        ["subject changed", "text template changed"],
    ]


def test_attachments_and_from_changes_are_named(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """`attachments changed: +new -old` and `from changed`, in one line."""
    files = make_campaign(tmp_path / "camp", extra="attachments: [a.pdf]\n")
    for name in ("a.pdf", "b.pdf"):
        (files.folder / name).write_bytes(b"%PDF-1.4\n")
    assert batch(files.yaml, smtp_server).exit_code == 0
    copy_with(files.yaml, files.yaml.name, "[a.pdf]", "[b.pdf]")
    copy_with(files.yaml, files.yaml.name, "sender@example.com", "news@example.com")
    result = batch(files.yaml, smtp_server)
    assert result.exit_code == 0, result.output
    [note] = notes(result.stderr)
    assert note.endswith(": from changed, attachments changed: +b.pdf -a.pdf since its last run")


def test_a_dry_run_of_an_edit_notes_it_and_writes_nothing(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    """A dry run shows the note a real run would, and leaves the state as it was."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    state = load_campaign(files.yaml).state_path
    before = state.read_bytes()
    copy_with(files.yaml, files.yaml.name, "Hello {{ first_name }}", "Hi {{ first_name }}")
    dry = cli("batch", files.yaml, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert [n.endswith("subject changed since its last run") for n in notes(dry.stderr)] == [True]
    assert state.read_bytes() == before
    assert len(history(files.yaml)) == 1


# --- SQLite: a moved folder -----------------------------------------------------------------


def test_a_moved_folder_with_the_same_content_runs_and_resends_nobody(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """The folder (state included) moved elsewhere: nobody is sent twice, the new path is
    recorded with a note; moved and edited (the old file is gone), it goes on too."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    old = files.yaml.resolve()
    moved = Path(shutil.move(files.folder, tmp_path / "archive" / "camp")) / "campaign.yaml"
    result = batch(moved, smtp_server, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped"] == 3 and len(recorder.messages) == 3
    [note] = notes(result.stderr)
    assert note == (
        f"campaign 'test-campaign' now runs from {moved.resolve()} "
        f"(before: {old}, no longer there; same content)"
    )

    again = Path(shutil.move(moved.parent, tmp_path / "camp2")) / "campaign.yaml"
    copy_with(again, again.name, "Hello {{ first_name }}", "Hello there {{ first_name }}")
    edited = batch(again, smtp_server)
    assert edited.exit_code == 0, edited.output
    [note] = notes(edited.stderr)
    assert note.endswith(": subject changed") and "no longer there" in note
    assert [e["changes"] for e in history(again)] == [
        ["first recorded"],
        [f"moved from {old}"],
        [f"moved from {moved.resolve()}", "subject changed"],
    ]
    assert len(recorder.messages) == 3


# --- status -----------------------------------------------------------------------------------


def test_status_shows_the_history(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """`status --json` lists every entry (when, file, host, digest, what changed); the table
    shows the latest five and says how many more --json has."""
    files = make_campaign(tmp_path / "camp")
    assert history(files.yaml) == []  # no state yet
    assert batch(files.yaml, smtp_server).exit_code == 0
    for i in range(6):
        copy_with(files.yaml, files.yaml.name, 'subject: "', f'subject: "{i} ')
        assert batch(files.yaml, smtp_server).exit_code == 0
    entries = history(files.yaml)
    assert len(entries) == 7
    assert set(entries[0]) == {"recorded", "file", "host", "digest", "changes"}
    assert entries[0]["file"] == str(files.yaml.resolve())
    assert entries[0]["changes"] == ["first recorded"]
    assert all(e["changes"] == ["subject changed"] for e in entries[1:])
    assert len({e["digest"] for e in entries}) == 7
    table = cli("status", files.yaml)
    assert table.exit_code == 0
    assert "Campaign history (fingerprint)" in table.stdout
    assert "2 earlier: --json lists them all" in table.stdout
    assert table.stdout.count("subject changed") == 5 and "first recorded" not in table.stdout


def test_a_state_file_of_an_older_mailcli_gains_the_history(
    tmp_path: Path, smtp_server: SmtpServer, recorder: Recorder
) -> None:
    """A state file made before fingerprints (no table): the next run adds the table and
    records its first entry, and resends nobody."""
    files = make_campaign(tmp_path / "camp")
    assert batch(files.yaml, smtp_server).exit_code == 0
    state = load_campaign(files.yaml).state_path
    with sqlite3.connect(state) as db:
        db.execute("DROP TABLE fingerprints")
    assert cli("batch", files.yaml, "--dry-run").exit_code == 0  # reads it without the table
    result = batch(files.yaml, smtp_server)
    assert result.exit_code == 0 and len(recorder.messages) == 3
    assert [e["changes"] for e in history(files.yaml)] == [["first recorded"]]


def test_recording_is_compare_and_set(tmp_path: Path) -> None:
    """A store records only on top of the entry the caller compared with."""
    files = make_campaign(tmp_path / "camp")
    current = compute(load_campaign(files.yaml))
    with SqliteState.open(tmp_path / "s.sqlite", "x") as state:
        assert state.add_fingerprint(current, ["first recorded"], after=None)
        assert not state.add_fingerprint(current, ["first recorded"], after=None)
        [entry] = state.fingerprints()
        assert entry.fingerprint == current and entry.changes == ("first recorded",)
        assert state.add_fingerprint(current, ["again"], after=entry.id)


# --- trials: the sandbox and the outbox -------------------------------------------------------


def test_sandbox_runs_check_the_sandbox_state_and_leave_the_real_one_alone(
    tmp_path: Path,
) -> None:
    """--sandbox keeps its progress (and so its history) in its folder: two campaign files
    with one name sharing a sandbox folder are refused as they would be for real, and the
    real state is never made."""
    files = make_campaign(tmp_path / "camp")
    out = tmp_path / "outbox"
    assert cli("batch", files.yaml, "--sandbox", out).exit_code == 0
    copy = copy_with(files.yaml, "summer.yaml", "Hello {{ first_name }}", "Summer sale")
    refused = cli("batch", copy, "--sandbox", out)
    assert refused.exit_code == 78 and REFUSED in refused.stderr
    assert len(list(out.glob("*.eml"))) == 3
    assert not load_campaign(files.yaml).state_path.exists()
    assert cli("batch", copy, "--sandbox", tmp_path / "outbox2").exit_code == 0


def test_a_run_into_the_outbox_never_records(tmp_path: Path, smtp_server: SmtpServer) -> None:
    """record_messages() works on a throw-away copy of the state: an edited campaign is
    compared with the real history, and nothing is added to it."""
    files = make_campaign(tmp_path / "camp", many_rows(4))
    assert batch(files.yaml, smtp_server, "--limit", "2").exit_code == 75
    copy_with(files.yaml, files.yaml.name, "Hello {{ first_name }}", "Hey {{ first_name }}")
    with mailcli.record_messages() as outbox:
        summary = mailcli.send_campaign(files.yaml)
    assert summary.sent == 2 and len(outbox) == 2
    assert [e["changes"] for e in history(files.yaml)] == [["first recorded"]]


# --- PostgreSQL: hosts share a campaign by name -------------------------------------------


def hosts(tmp_path: Path, url: str, count: int) -> list[Path]:
    """The same campaign in `count` folders, as on separate hosts."""
    first = make_campaign(tmp_path / "host0", many_rows(20), extra=f'state: "{url}"\n')
    paths = [first.yaml]
    for i in range(1, count):
        shutil.copytree(first.folder, tmp_path / f"host{i}")
        paths.append(tmp_path / f"host{i}" / "campaign.yaml")
    return paths


@pytest.mark.postgres
def test_hosts_with_the_same_content_share_the_campaign_and_other_content_is_refused(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two copies of the folder at different paths (two hosts) with the same content share the
    campaign: no note, one history entry. A copy with another subject is refused, naming both
    files and the host that recorded the last fingerprint, and sends nothing; an edit on that
    host, in that file, goes on with a note, and the other host follows once it has the edit."""
    first, second = hosts(tmp_path, pg_url, 2)
    limited = batch(first, smtp_server, "--limit", "5", "--json")
    assert limited.exit_code == 75, limited.output
    shared = batch(second, smtp_server, "--json")
    assert shared.exit_code == 0, shared.output
    assert json.loads(shared.stdout)["sent"] == 15 and notes(shared.stderr) == []
    assert len(recorder.messages) == 20
    [entry] = history(second)
    assert entry["file"] == str(first.resolve()) and entry["changes"] == ["first recorded"]

    files = make_campaign(tmp_path / "host1", many_rows(21), extra=f'state: "{pg_url}"\n')
    copy_with(files.yaml, files.yaml.name, "Hello {{ first_name }}", "Summer sale")
    refused = batch(second, smtp_server)
    assert refused.exit_code == 78, refused.output
    [line] = [line for line in refused.stderr.splitlines() if "its own `name:`" in line]
    assert str(second.resolve()) in line and str(first.resolve()) in line
    assert "subject changed" in line and "in the shared state" in line
    assert len(recorder.messages) == 20

    # An edit where the last fingerprint was recorded: the host of `first` (this machine).
    copy_with(first, first.name, "Hello {{ first_name }}", "Summer sale")
    (first.parent / "list.csv").write_text(
        (files.folder / "list.csv").read_text(encoding="utf-8"), encoding="utf-8"
    )
    edited = batch(first, smtp_server, "--json")
    assert edited.exit_code == 0, edited.output
    assert json.loads(edited.stdout)["sent"] == 1
    [note] = notes(edited.stderr)
    assert note.endswith("subject changed since its last run")
    follows = batch(second, smtp_server, "--json")
    assert follows.exit_code == 0 and notes(follows.stderr) == []
    assert [e["changes"] for e in history(first)] == [["first recorded"], ["subject changed"]]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT count(*) FROM mailcli_fingerprints").fetchone()
    assert rows == (2,)


@pytest.mark.postgres
def test_another_host_with_other_content_is_refused(tmp_path: Path, pg_url: str) -> None:
    """The same file path on two hosts tells nothing: an edit counts as one only from the host
    that recorded the last fingerprint (here a host named elsewhere)."""
    [first] = hosts(tmp_path, pg_url, 1)
    campaign = load_campaign(first)
    with PgState.open(pg_url, campaign.name) as state:
        other = compute(campaign, host="mail2.example")
        assert state.add_fingerprint(other, ["first recorded"], after=None)
        assert not state.add_fingerprint(other, ["first recorded"], after=None)
    copy_with(first, first.name, "Hello {{ first_name }}", "Summer sale")
    refused = cli("batch", first, "--host", "127.0.0.1", "--port", "1", "--security", "none")
    assert refused.exit_code == 78, refused.output
    assert "on mail2.example" in refused.stderr and "nothing was sent" in refused.stderr


@pytest.mark.postgres
def test_a_shared_store_of_an_older_mailcli_gains_the_table(
    tmp_path: Path, smtp_server: SmtpServer, pg_url: str
) -> None:
    """A database made before fingerprints: status reads it (no history), the next run adds
    the table and records its first entry."""
    [first] = hosts(tmp_path, pg_url, 1)
    assert batch(first, smtp_server, "--limit", "3").exit_code == 75
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE mailcli_fingerprints")
    assert history(first) == []
    assert batch(first, smtp_server).exit_code == 0
    assert [e["changes"] for e in history(first)] == [["first recorded"]]
