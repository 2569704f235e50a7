"""Where the SMTP password comes from, with real sources: MAILCLI_PASSWORD, a real (file) keyring,
a real password_command process, the prompt; and `mailcli password set|delete`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcli.cli import app
from mailcli.errors import ConfigError
from mailcli.secrets import keyring_get, keyring_set, password_source, resolve_password
from mailcli.settings import Profile
from mailcli.transport import SmtpSettings

HOST, USER = "smtp.example.com", "me@example.com"
KEY = f"{USER}@{HOST}"
SETTINGS = SmtpSettings(host=HOST, port=587, username=USER)
runner = CliRunner()


def script(tmp_path: Path, body: str, name: str = "password.sh") -> str:
    """An executable shell script in tmp_path; returns it as a password_command string."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body), encoding="utf-8")
    path.chmod(0o755)
    return shlex.quote(str(path))


def with_command(command: str) -> Profile:
    return Profile(name="work", password_command=command)


# --- resolve_password: the order of the sources ------------------------------------------------


def test_env_password_wins_over_keyring(
    test_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAILCLI_PASSWORD is used even when the keyring holds a password for the login."""
    keyring_set(USER, HOST, "from-keyring")
    monkeypatch.setenv("MAILCLI_PASSWORD", "from-env")
    assert resolve_password(SETTINGS, None, interactive=False) == "from-env"


def test_keyring_wins_over_password_command(test_keyring: Path, tmp_path: Path) -> None:
    """A stored keyring password is used and the password_command is never run."""
    keyring_set(USER, HOST, "from-keyring")
    ran = tmp_path / "ran"
    command = script(tmp_path, f"touch {shlex.quote(str(ran))}\necho from-command\n")
    assert resolve_password(SETTINGS, with_command(command), interactive=False) == "from-keyring"
    assert not ran.exists()


def test_keyring_is_keyed_by_username_and_host(test_keyring: Path) -> None:
    """A password stored for another host is not used for this one."""
    keyring_set(USER, "other.example.com", "wrong-host")
    with pytest.raises(ConfigError):
        resolve_password(SETTINGS, None, interactive=False)


def test_password_command_used_when_nothing_else_has_one(
    test_keyring: Path, tmp_path: Path
) -> None:
    """With no env variable and nothing stored, the command's first output line is the password."""
    command = script(tmp_path, "echo 'from command'\necho second-line\n")
    assert resolve_password(SETTINGS, with_command(command), interactive=False) == "from command"


def test_password_command_with_arguments(test_keyring: Path) -> None:
    """A password_command is split like a shell would, so quoted arguments reach the program."""
    command = shlex.join([sys.executable, "-c", "print('py secret')"])
    assert resolve_password(SETTINGS, with_command(command), interactive=False) == "py secret"


def test_failing_password_command_hides_its_output(test_keyring: Path, tmp_path: Path) -> None:
    """A non-zero exit is exit 78 naming the exit code, without any of the command's output."""
    command = script(tmp_path, "echo partial-SECRET-out\necho partial-SECRET-err >&2\nexit 3\n")
    with pytest.raises(ConfigError) as info:
        resolve_password(SETTINGS, with_command(command), interactive=False)
    assert info.value.exit_code == 78
    assert "exit code 3" in str(info.value)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("body", ["exit 0\n", "echo\n"], ids=["no-output", "empty-line"])
def test_password_command_printing_nothing_is_an_error(
    test_keyring: Path, tmp_path: Path, body: str
) -> None:
    """A command that prints no password is a ConfigError, not an empty password."""
    command = script(tmp_path, body)
    with pytest.raises(ConfigError, match="printed nothing"):
        resolve_password(SETTINGS, with_command(command), interactive=False)


def test_password_command_that_cannot_run(test_keyring: Path, tmp_path: Path) -> None:
    """A missing program is a ConfigError saying it could not run."""
    command = shlex.quote(str(tmp_path / "no-such-program"))
    with pytest.raises(ConfigError, match="could not run"):
        resolve_password(SETTINGS, with_command(command), interactive=False)


def test_prompt_used_when_interactive(test_keyring: Path) -> None:
    """On a terminal the prompt is asked once, naming USERNAME@HOST, and its answer is used."""
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    assert resolve_password(SETTINGS, None, interactive=True, prompt=prompt) == "typed"
    assert asked == [f"Password for {KEY}: "]


def test_no_prompt_when_not_interactive(test_keyring: Path) -> None:
    """Without a terminal the prompt is never called and the lookup fails instead."""
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "typed"

    with pytest.raises(ConfigError):
        resolve_password(SETTINGS, None, interactive=False, prompt=prompt)
    assert asked == []


def test_empty_prompt_answer_is_an_error(test_keyring: Path) -> None:
    """An empty answer at the prompt is not a password."""
    with pytest.raises(ConfigError, match=f"no password for {KEY}"):
        resolve_password(SETTINGS, None, interactive=True, prompt=lambda _: "")


def test_no_source_error_names_every_option(test_keyring: Path) -> None:
    """With no source the error names MAILCLI_PASSWORD, password set, password_command."""
    with pytest.raises(ConfigError) as info:
        resolve_password(SETTINGS, None, interactive=False)
    assert info.value.exit_code == 78
    assert info.value.message == f"no password for {KEY}"
    hint = info.value.hint or ""
    assert "MAILCLI_PASSWORD" in hint
    assert f"mailcli password set --host {HOST} --username {USER}" in hint
    assert "password_command" in hint
    assert "no system keyring" not in hint


def test_no_keyring_error_says_so(no_keyring: None) -> None:
    """On a machine without a keyring the error also says plainly that none is available."""
    with pytest.raises(ConfigError) as info:
        resolve_password(SETTINGS, None, interactive=False)
    assert "no system keyring is available" in str(info.value)
    assert "MAILCLI_PASSWORD" in str(info.value)


def test_no_keyring_still_falls_through_to_password_command(
    no_keyring: None, tmp_path: Path
) -> None:
    """A missing keyring is skipped, not fatal: the password_command still supplies the password."""
    command = script(tmp_path, "echo headless-secret\n")
    assert resolve_password(SETTINGS, with_command(command), interactive=False) == "headless-secret"


# --- password_source ---------------------------------------------------------------------------


def test_password_source_is_none_without_username(test_keyring: Path) -> None:
    """Without a username there is no login, so no password source."""
    assert password_source(SmtpSettings(host=HOST, port=25), with_command("true")) is None


def test_password_source_resolves_once(test_keyring: Path, tmp_path: Path) -> None:
    """The command runs only when the first login needs it, and only once for later logins."""
    counter = tmp_path / "runs"
    command = script(tmp_path, f"echo run >> {shlex.quote(str(counter))}\necho counted\n")
    source = password_source(SETTINGS, with_command(command))
    assert source is not None
    assert not counter.exists()
    assert (source(), source()) == ("counted", "counted")
    assert counter.read_text().splitlines() == ["run"]


# --- mailcli password set | delete -------------------------------------------------------------

LOGIN = ["--host", HOST, "--username", USER]


def test_password_set_reads_stdin_and_stores_it(test_keyring: Path) -> None:
    """`password set` stores stdin's line under service mailcli, key USERNAME@HOST, unechoed."""
    from keyrings.alt.file import PlaintextKeyring

    result = runner.invoke(app, ["password", "set", *LOGIN], input="s3cret\n")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert KEY in result.stdout
    assert keyring_get(USER, HOST) == "s3cret"
    fresh = PlaintextKeyring()
    assert Path(fresh.file_path) == test_keyring
    assert fresh.get_password("mailcli", KEY) == "s3cret"


def test_password_set_empty_stdin_stores_nothing(test_keyring: Path) -> None:
    """An empty line on stdin is a usage error and nothing is stored."""
    result = runner.invoke(app, ["password", "set", *LOGIN], input="\n")
    assert result.exit_code == 2
    assert "empty password" in result.stderr
    assert keyring_get(USER, HOST) is None


def test_password_delete_removes_it_and_second_delete_exits_2(test_keyring: Path) -> None:
    """`password delete` removes the entry; deleting it again is exit 2 naming the login."""
    keyring_set(USER, HOST, "s3cret")
    first = runner.invoke(app, ["password", "delete", *LOGIN])
    assert first.exit_code == 0, first.output
    assert keyring_get(USER, HOST) is None
    second = runner.invoke(app, ["password", "delete", *LOGIN])
    assert second.exit_code == 2
    assert f"no password is stored for {KEY}" in second.stderr


def test_password_set_takes_login_from_profile(
    test_keyring: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --profile NAME the host and username come from that profile."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "profiles:\n  work:\n    host: smtp.work.example\n    username: me@work.example\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MAILCLI_CONFIG", str(config))
    result = runner.invoke(app, ["password", "set", "--profile", "work"], input="w0rk\n")
    assert result.exit_code == 0, result.output
    assert keyring_get("me@work.example", "smtp.work.example") == "w0rk"


def test_password_set_without_username_exits_2(test_keyring: Path) -> None:
    """Without a username from any source `password set` is a usage error and stores nothing."""
    result = runner.invoke(app, ["password", "set", "--host", HOST], input="s3cret\n")
    assert result.exit_code == 2
    assert "no username" in result.stderr
    assert not test_keyring.exists() or "s3cret" not in test_keyring.read_text()


def test_password_set_without_keyring_exits_78(no_keyring: None) -> None:
    """On a machine without a keyring `password set` is exit 78 and says so plainly."""
    result = runner.invoke(app, ["password", "set", *LOGIN], input="s3cret\n")
    assert result.exit_code == 78
    assert "no system keyring is available" in result.stderr
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


def test_password_set_in_subprocess_is_readable_in_process(test_keyring: Path) -> None:
    """`python -m mailcli password set` with a piped password stores it in the same keyring."""
    result = subprocess.run(
        [sys.executable, "-m", "mailcli", "password", "set", *LOGIN],
        input="piped-s3cret\n",
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "piped-s3cret" not in result.stdout + result.stderr
    assert keyring_get(USER, HOST) == "piped-s3cret"
