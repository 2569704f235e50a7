"""Where the SMTP password comes from: never YAML, never the command line.

Resolution order: MAILCLI_PASSWORD, the system keyring (service `mailcli`, key `USERNAME@HOST`),
the profile's `password_command`, an interactive prompt when stdin is a terminal. Otherwise a clear
error that names these options. The password is looked up once per run, when the first login
needs it, and never printed.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

from mailcli.errors import ConfigError, MailcliError

if TYPE_CHECKING:
    from mailcli.apiconf import ApiConfig
    from mailcli.settings import Profile
    from mailcli.transport import SmtpSettings

PASSWORD_ENV = "MAILCLI_PASSWORD"
KEYRING_SERVICE = "mailcli"
COMMAND_TIMEOUT_S = 60


class KeyringUnavailable(MailcliError):
    """No usable keyring backend on this machine (exit 78)."""

    exit_code = ConfigError.exit_code


def keyring_key(username: str, host: str) -> str:
    """The keyring entry name for a login: `USERNAME@HOST`."""
    return f"{username}@{host}"


def _keyring_backend() -> ModuleType:
    """The keyring module, or KeyringUnavailable saying plainly why there is none."""
    import keyring
    from keyring.backends import fail

    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring):
        raise KeyringUnavailable(
            "no system keyring is available on this machine (common on headless servers)",
            hint=f"use {PASSWORD_ENV} or a profile's password_command instead, or install a "
            "keyring backend (e.g. `pip install keyrings.alt`) and select it with "
            "PYTHON_KEYRING_BACKEND",
        )
    return keyring


def dkim_keyring_entry(domain: str, selector: str) -> str:
    """The keyring entry name for a DKIM private key: its DNS name, prefixed `dkim:`."""
    return f"dkim:{selector}._domainkey.{domain}"


def keyring_get(username: str, host: str) -> str | None:
    """The stored password, or None; KeyringUnavailable when there is no keyring at all."""
    return keyring_read(keyring_key(username, host))


def keyring_set(username: str, host: str, password: str) -> None:
    """Store a password in the system keyring."""
    keyring_write(keyring_key(username, host), password)


def keyring_delete(username: str, host: str) -> bool:
    """Remove a stored password; False when there was none."""
    return keyring_remove(keyring_key(username, host))


def keyring_read(entry: str) -> str | None:
    """A secret stored under `entry` (service `mailcli`), or None."""
    keyring = _keyring_backend()
    try:
        value = keyring.get_password(KEYRING_SERVICE, entry)
    except Exception as exc:  # backends raise their own errors (D-Bus, locked collections, ...)
        raise KeyringUnavailable(f"the system keyring could not be read: {exc}") from None
    return value if isinstance(value, str) else None


def keyring_write(entry: str, secret: str) -> None:
    """Store a secret under `entry` (service `mailcli`)."""
    keyring = _keyring_backend()
    from keyring.errors import KeyringError

    try:
        keyring.set_password(KEYRING_SERVICE, entry, secret)
    except KeyringError as exc:
        raise KeyringUnavailable(f"the system keyring refused the secret: {exc}") from None


def keyring_remove(entry: str) -> bool:
    """Remove the secret under `entry`; False when there was none."""
    keyring = _keyring_backend()
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, entry)
    except PasswordDeleteError:
        return False
    except KeyringError as exc:
        raise KeyringUnavailable(f"the system keyring could not delete it: {exc}") from None
    return True


def run_password_command(command: str, what: str = "password_command") -> str:
    """Run a profile's password_command (or an `api.token_command`); its first line of output
    is the secret."""
    try:
        result = subprocess.run(
            shlex.split(command),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {command!r} could not run: {exc}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{what} {command!r} took more than {COMMAND_TIMEOUT_S} s") from None
    if result.returncode != 0:
        # Its output is not shown: it may hold part of a secret.
        raise ConfigError(f"{what} {command!r} failed with exit code {result.returncode}")
    password = result.stdout.splitlines()[0].strip() if result.stdout else ""
    if not password:
        raise ConfigError(f"{what} {command!r} printed nothing")
    return password


def resolve_password(
    settings: SmtpSettings,
    profile: Profile | None,
    *,
    env: Mapping[str, str] | None = None,
    interactive: bool | None = None,
    prompt: Callable[[str], str] = getpass.getpass,
) -> str:
    """The password for `settings.username`, from the first source that has one."""
    environ = os.environ if env is None else env
    username = settings.username or ""
    value = environ.get(PASSWORD_ENV)
    if value:
        return value
    keyring_note = ""
    try:
        stored = keyring_get(username, settings.host)
    except KeyringUnavailable as exc:
        keyring_note = f" ({exc.message})"
        stored = None
    if stored:
        return stored
    if profile is not None and profile.password_command:
        return run_password_command(profile.password_command)
    if interactive if interactive is not None else sys.stdin.isatty():
        answer = prompt(f"Password for {keyring_key(username, settings.host)}: ")
        if answer:
            return answer
    raise ConfigError(
        f"no password for {keyring_key(username, settings.host)}",
        hint=f"set {PASSWORD_ENV}, store one with `mailcli password set --host {settings.host} "
        f"--username {username}`{keyring_note}, or give the profile a password_command; "
        "a prompt is only shown on a terminal",
    )


def password_source(
    settings: SmtpSettings,
    profile: Profile | None,
    env: Mapping[str, str] | None = None,
    *,
    interactive: bool | None = None,
) -> Callable[[], str] | None:
    """A function giving the password when a login needs it (None: no login).

    The first call resolves it; later logins (after a reconnect) reuse it without asking again.
    """
    if not settings.username:
        return None
    cache: list[str] = []

    def password() -> str:
        if not cache:
            cache.append(resolve_password(settings, profile, env=env, interactive=interactive))
        return cache[0]

    return password


def api_keyring_entry(provider: str) -> str:
    """The keyring entry name for a provider's API token: `api:PROVIDER`."""
    return f"api:{provider}"


def resolve_token(config: ApiConfig, env: Mapping[str, str] | None = None) -> str:
    """An API provider's token: its usual variable, the keyring, then `api.token_command`."""
    environ = os.environ if env is None else env
    info = config.info
    value = environ.get(info.token_env, "").strip()
    if value:
        return value
    keyring_note = ""
    try:
        stored = keyring_read(api_keyring_entry(config.provider))
    except KeyringUnavailable as exc:
        keyring_note = f" ({exc.message})"
        stored = None
    if stored:
        return stored.strip()
    if config.token_command:
        return run_password_command(config.token_command, "api.token_command")
    raise ConfigError(
        f"no API token for {info.title}",
        hint=f"set {info.token_env}, store one with `mailcli password set --api "
        f"{config.provider}`{keyring_note}, or give api.token_command",
    )


def token_source(config: ApiConfig, env: Mapping[str, str] | None = None) -> Callable[[], str]:
    """A function giving the API token, looked up on the first call and kept after."""
    cache: list[str] = []

    def token() -> str:
        if not cache:
            cache.append(resolve_token(config, env))
        return cache[0]

    return token
