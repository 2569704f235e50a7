"""SMTP settings: where config.yaml lives, how profiles load (and fail, at file and line), and the
precedence flags > MAILCLI_* variables > campaign `smtp:` > profile > built-in defaults."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcli.campaign import SmtpConfig
from mailcli.cli import app
from mailcli.errors import ConfigError, UsageError
from mailcli.settings import Profile, config_file, load_profile, resolve_smtp

WriteConfig = Callable[[str], Path]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteConfig:
    """Write a config.yaml into tmp_path and point MAILCLI_CONFIG at it."""

    def write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        monkeypatch.setenv("MAILCLI_CONFIG", str(path))
        return path

    return write


# --- config_file -------------------------------------------------------------------------------


def test_mailcli_config_wins_over_xdg(tmp_path: Path) -> None:
    """MAILCLI_CONFIG is used as is, even when XDG_CONFIG_HOME is set too."""
    env = {"MAILCLI_CONFIG": str(tmp_path / "mine.yaml"), "XDG_CONFIG_HOME": str(tmp_path / "x")}
    assert config_file(env) == tmp_path / "mine.yaml"


def test_config_file_reads_os_environ_by_default(tmp_path: Path) -> None:
    """Without an env argument, config_file follows the process's MAILCLI_CONFIG."""
    assert config_file() == tmp_path / "no-config.yaml"  # set by the autouse fixture


def test_mailcli_config_expands_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `~` in MAILCLI_CONFIG means the home folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_file({"MAILCLI_CONFIG": "~/mailcli.yaml"}) == tmp_path / "mailcli.yaml"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG base directories are Linux's")
def test_xdg_config_home_on_linux(tmp_path: Path) -> None:
    """On Linux the file is $XDG_CONFIG_HOME/mailcli/config.yaml."""
    assert config_file({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "mailcli" / "config.yaml"


@pytest.mark.skipif(sys.platform != "linux", reason="XDG base directories are Linux's")
@pytest.mark.parametrize("env", [{}, {"XDG_CONFIG_HOME": ""}, {"MAILCLI_CONFIG": ""}])
def test_linux_default_is_dot_config(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without (or with empty) variables the file is ~/.config/mailcli/config.yaml."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_file(env) == tmp_path / ".config" / "mailcli" / "config.yaml"


# --- load_profile ------------------------------------------------------------------------------

PROFILES = """\
    profiles:
      default:
        host: default.example
      work:
        host: smtp.work.example
        port: 2525
        security: tls
        username: me@work.example
        timeout: 12
        from: "Me <me@work.example>"
        password_command: pass show smtp
        auth: LOGIN
        allow_plaintext_auth: true
        insecure_skip_verify: true
    """


def test_named_profile_is_loaded_with_every_key(config: WriteConfig) -> None:
    """A named profile becomes a Profile holding every key it gives (auth lower-cased)."""
    config(PROFILES)
    assert load_profile("work") == Profile(
        name="work",
        smtp=SmtpConfig(
            host="smtp.work.example",
            port=2525,
            security="tls",
            username="me@work.example",
            timeout=12.0,
        ),
        sender="Me <me@work.example>",
        password_command="pass show smtp",
        auth="login",
        allow_plaintext_auth=True,
        insecure_skip_verify=True,
    )


def test_missing_named_profile_lists_known_profiles(config: WriteConfig) -> None:
    """Asking for a profile that is not there names the file and the profiles that are."""
    path = config(PROFILES)
    with pytest.raises(ConfigError) as info:
        load_profile("home")
    assert "'home' not found" in info.value.message
    assert "default, work" in info.value.message
    assert info.value.path == str(path)
    assert info.value.exit_code == 78


def test_named_profile_without_config_file_names_the_path(tmp_path: Path) -> None:
    """A named profile with no config file at all is an error that names the missing file."""
    with pytest.raises(ConfigError) as info:
        load_profile("work")
    assert str(tmp_path / "no-config.yaml") in str(info.value)


def test_no_file_and_no_name_is_no_profile() -> None:
    """Without a config file and without a name there is simply no profile."""
    assert load_profile(None) is None


def test_no_name_takes_the_default_profile(config: WriteConfig) -> None:
    """Without a name, the profile called `default` is used when the file has one."""
    config(PROFILES)
    profile = load_profile(None)
    assert profile is not None
    assert (profile.name, profile.smtp.host) == ("default", "default.example")


def test_no_name_and_no_default_profile_is_none(config: WriteConfig) -> None:
    """Without a name and without a `default` profile, no profile applies."""
    config("profiles:\n  work:\n    host: smtp.work.example\n")
    assert load_profile(None) is None


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "profiles:\n  work:\n    host: h\n    hostname: x\n",
            4,
            "unknown key 'profiles.work.hostname'",
        ),
        ("profiles:\n  work:\n    host: h\nprofile: x\n", 4, "unknown key 'profile'"),
        ("profiles:\n  work: smtp.example.com\n", 2, "'profiles.work': must be a mapping"),
    ],
)
def test_bad_profile_structure_names_file_and_line(
    config: WriteConfig, text: str, line: int, message: str
) -> None:
    """Unknown keys (in a profile or at the top) and non-mapping profiles point at their line."""
    path = config(text)
    with pytest.raises(ConfigError) as info:
        load_profile("work")
    assert (info.value.path, info.value.line) == (str(path), line)
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_password_in_profile_is_refused(config: WriteConfig) -> None:
    """A `password` key in a profile is exit 78 at its line, never echoing the secret."""
    path = config("profiles:\n  work:\n    host: h\n    username: u\n    password: hunter2\n")
    with pytest.raises(ConfigError) as info:
        load_profile("work")
    assert info.value.exit_code == 78
    assert (info.value.path, info.value.line) == (str(path), 5)
    assert "'profiles.work.password' is not allowed" in info.value.message
    assert "password_command" in (info.value.hint or "")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("port: abc", "'profiles.work.port': must be a port number, not a string"),
        ("port: 70000", "'profiles.work.port': 70000 is not a port number"),
        ("port: 0", "'profiles.work.port': 0 is not a port number"),
        ("security: ssl", "'profiles.work.security': must be one of starttls, tls, none"),
        ("auth: ntlm", "'profiles.work.auth': must be one of plain, login"),
        ("from: 'a@x.example, b@y.example'", "'profiles.work.from': expected one address"),
        ("from: ''", "'profiles.work.from': must not be empty"),
        ("timeout: -1", "'profiles.work.timeout': must be a positive number"),
        ("allow_plaintext_auth: maybe", "'profiles.work.allow_plaintext_auth': must be true or"),
        ("insecure_skip_verify: 1", "'profiles.work.insecure_skip_verify': must be true or"),
    ],
)
def test_bad_profile_value_names_file_and_line(
    config: WriteConfig, line: str, message: str
) -> None:
    """An invalid port, security, auth, from, timeout or flag value is exit 78 at its line."""
    path = config(f"profiles:\n  work:\n    host: smtp.example.com\n    {line}\n")
    with pytest.raises(ConfigError) as info:
        load_profile("work")
    assert (info.value.path, info.value.line) == (str(path), 4)
    assert message in info.value.message
    assert info.value.exit_code == 78


# --- resolve_smtp: precedence ------------------------------------------------------------------

LAYERS = ("flag", "env", "campaign", "profile")
# One value per layer, each different from the one below it and from the built-in default.
VALUES: dict[str, tuple[object, ...]] = {
    "host": ("flag.example", "env.example", "campaign.example", "profile.example"),
    "port": (1001, 1002, 1003, 1004),
    "security": ("none", "tls", "none", "tls"),
    "username": ("flag-user", "env-user", "campaign-user", "profile-user"),
    "timeout": (1.0, None, 3.0, 4.0),  # there is no MAILCLI_TIMEOUT
}
ENV_VARS = {
    "host": "MAILCLI_HOST",
    "port": "MAILCLI_PORT",
    "security": "MAILCLI_SECURITY",
    "username": "MAILCLI_USERNAME",
}
PRECEDENCE = [
    pytest.param(key, layer, id=f"{key}-{layer}-wins")
    for key, values in VALUES.items()
    for layer, value in zip(LAYERS, values, strict=True)
    if value is not None
]


@pytest.mark.parametrize(("key", "winner"), PRECEDENCE)
def test_each_layer_wins_over_the_ones_below(
    config: WriteConfig, monkeypatch: pytest.MonkeyPatch, key: str, winner: str
) -> None:
    """With the winner's layer and every layer below it set, the winner's value is used."""
    profile_lines = "".join(f"    {k}: {v[3]}\n" for k, v in VALUES.items())
    config("profiles:\n  default:\n" + profile_lines)
    top = LAYERS.index(winner)
    given = {layer: VALUES[key][i] for i, layer in enumerate(LAYERS) if i >= top}
    flags = SmtpConfig(**{key: given["flag"]}) if "flag" in given else SmtpConfig()
    if given.get("env") is not None:
        monkeypatch.setenv(ENV_VARS[key], str(given["env"]))
    campaign = SmtpConfig(**{key: given["campaign"]}) if "campaign" in given else None
    settings, profile = resolve_smtp(flags, campaign)
    assert getattr(settings, key) == VALUES[key][top]
    assert profile is not None and profile.name == "default"


@pytest.mark.parametrize(
    ("security", "port"), [(None, 587), ("starttls", 587), ("tls", 465), ("none", 25)]
)
def test_defaults_without_profile(security: str | None, port: int) -> None:
    """Only a host given: starttls, the security's usual port, 30 s, verified TLS, no login."""
    settings, profile = resolve_smtp(SmtpConfig(host="smtp.example.com", security=security))
    assert profile is None
    assert (settings.security, settings.port, settings.timeout) == (
        security or "starttls",
        port,
        30,
    )
    assert settings.verify is True
    assert (settings.username, settings.auth, settings.allow_plaintext_auth) == (None, None, False)


def test_default_port_follows_security_from_any_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default port is chosen after security is resolved, here from MAILCLI_SECURITY."""
    monkeypatch.setenv("MAILCLI_SECURITY", "tls")
    settings, _ = resolve_smtp(SmtpConfig(host="smtp.example.com"))
    assert (settings.security, settings.port) == ("tls", 465)


def test_empty_env_variable_is_ignored(
    config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty MAILCLI_HOST does not hide the profile's host."""
    config("profiles:\n  default:\n    host: profile.example\n")
    monkeypatch.setenv("MAILCLI_HOST", "")
    assert resolve_smtp(SmtpConfig())[0].host == "profile.example"


PROFILE_CHOICE = """\
    profiles:
      default: {host: default.example}
      by-flag: {host: flag.example}
      by-env: {host: env.example}
      by-campaign: {host: campaign.example}
    """


@pytest.mark.parametrize(
    ("flag", "env", "campaign", "chosen"),
    [
        ("by-flag", "by-env", "by-campaign", "by-flag"),
        (None, "by-env", "by-campaign", "by-env"),
        (None, None, "by-campaign", "by-campaign"),
        (None, None, None, "default"),
    ],
)
def test_profile_chosen_by_flag_then_env_then_campaign(
    config: WriteConfig,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    campaign: str | None,
    chosen: str,
) -> None:
    """--profile beats MAILCLI_PROFILE, which beats the campaign's smtp.profile, then `default`."""
    config(PROFILE_CHOICE)
    if env is not None:
        monkeypatch.setenv("MAILCLI_PROFILE", env)
    settings, profile = resolve_smtp(SmtpConfig(profile=flag), SmtpConfig(profile=campaign))
    assert profile is not None and profile.name == chosen
    assert settings.host == chosen.removeprefix("by-") + ".example"


def test_campaign_naming_missing_profile_is_an_error(config: WriteConfig) -> None:
    """A campaign's smtp.profile missing from the config file is an error, not a silent default."""
    config(PROFILE_CHOICE)
    with pytest.raises(ConfigError, match="'nope' not found"):
        resolve_smtp(SmtpConfig(), SmtpConfig(profile="nope"))


@pytest.mark.parametrize(
    ("flag", "in_profile", "verify"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_insecure_skip_verify_from_flag_or_profile(
    config: WriteConfig, flag: bool, in_profile: bool, verify: bool
) -> None:
    """Certificate checks are off when the flag or the profile says so, and only then."""
    config(f"profiles:\n  default:\n    host: h.example\n    insecure_skip_verify: {in_profile}\n")
    settings, _ = resolve_smtp(SmtpConfig(), insecure_skip_verify=flag)
    assert settings.verify is verify


def test_auth_and_plaintext_come_from_profile(config: WriteConfig) -> None:
    """`auth` (lower-cased) and `allow_plaintext_auth` are taken from the profile."""
    config(
        "profiles:\n  default:\n    host: h.example\n    auth: CRAM-MD5\n"
        "    allow_plaintext_auth: true\n"
    )
    settings, _ = resolve_smtp(SmtpConfig(host="flag.example"))
    assert (settings.host, settings.auth, settings.allow_plaintext_auth) == (
        "flag.example",
        "cram-md5",
        True,
    )


def test_no_host_anywhere_suggests_sandbox() -> None:
    """Without a host from any source: exit 78 with a hint naming the sources and --sandbox."""
    with pytest.raises(ConfigError) as info:
        resolve_smtp(SmtpConfig(username="me"), SmtpConfig(port=25))
    assert info.value.exit_code == 78
    assert "no SMTP server" in info.value.message
    hint = info.value.hint or ""
    assert "--sandbox" in hint and "MAILCLI_HOST" in hint and "--host" in hint


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("MAILCLI_PORT", "smtp", "MAILCLI_PORT must be a port number, not 'smtp'"),
        ("MAILCLI_PORT", "70000", "70000 is not a port number"),
        ("MAILCLI_SECURITY", "ssl", "security must be one of starttls, tls, none"),
    ],
)
def test_bad_env_value_is_usage_error(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, message: str
) -> None:
    """A MAILCLI_PORT that is not a port, or an unknown MAILCLI_SECURITY, is a usage error (2)."""
    monkeypatch.setenv(var, value)
    with pytest.raises(UsageError) as info:
        resolve_smtp(SmtpConfig(host="smtp.example.com"))
    assert info.value.exit_code == 2
    assert message in info.value.message


def test_bad_mailcli_port_exits_2_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI, MAILCLI_PORT=abc stops test-connection with exit 2, no traceback."""
    monkeypatch.setenv("MAILCLI_PORT", "abc")
    result = CliRunner().invoke(app, ["test-connection", "--host", "smtp.example.com"])
    assert result.exit_code == 2
    assert "MAILCLI_PORT must be a port number" in result.stderr
    assert "Traceback" not in result.output
