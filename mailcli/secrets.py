"""Where the SMTP password comes from: never YAML, never the command line."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from mailcli.errors import ConfigError
from mailcli.settings import Profile
from mailcli.transport import SmtpSettings

PASSWORD_ENV = "MAILCLI_PASSWORD"


def password_source(
    settings: SmtpSettings,
    profile: Profile | None,
    env: Mapping[str, str] | None = None,
) -> Callable[[], str] | None:
    """A function that yields the password when the server asks for a login (None: no login)."""
    if not settings.username:
        return None
    environ = os.environ if env is None else env

    def password() -> str:
        value = environ.get(PASSWORD_ENV)
        if value:
            return value
        raise ConfigError(
            f"no password for {settings.username}@{settings.host}",
            hint=f"set {PASSWORD_ENV} in the environment",
        )

    return password
