"""`mailcli test-connection`: diagnose an SMTP server the way swaks does, without sending mail.

It connects, records the banner, the EHLO capabilities before and after STARTTLS, the TLS version,
cipher and peer certificate, the AUTH mechanisms and whether the login works, and the time of each
phase. When the certificate is not trusted it fetches it again without verification, so the report
can say what the certificate is and why it failed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from mailcli.errors import AuthError, CertificateError, ExitCode, MailcliError
from mailcli.transport import (
    SessionInfo,
    SmtpSettings,
    Transcript,
    advertised_auth,
    establish,
    login,
)


@dataclasses.dataclass
class Diagnosis:
    """Everything test-connection found out; `to_json()` is the contract's `--json` object."""

    settings: SmtpSettings
    info: SessionInfo = dataclasses.field(default_factory=SessionInfo)
    certificate: dict[str, Any] | None = None
    auth: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    exit_code: int = ExitCode.OK

    @property
    def ok(self) -> bool:
        """True when the connection (and the login, if one was asked for) worked."""
        return self.exit_code == ExitCode.OK

    @property
    def tls(self) -> dict[str, Any] | None:
        """TLS version, cipher and certificate, or None for a plain connection."""
        if self.info.tls_version is None and self.certificate is None:
            return None
        return {
            "version": self.info.tls_version,
            "cipher": self.info.cipher,
            "bits": self.info.cipher_bits,
            "certificate": self.certificate,
        }

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report."""
        s = self.settings
        return {
            "ok": self.ok,
            "host": s.host,
            "port": s.port,
            "security": s.security,
            "peer": self.info.peer,
            "banner": self.info.banner,
            "capabilities_before_tls": _caps(self.info.capabilities_before_tls),
            "capabilities": _caps(self.info.capabilities),
            "tls": self.tls,
            "auth": self.auth,
            "timings_ms": self.info.timings_ms,
            "error": self.error,
            "exit_code": int(self.exit_code),
        }


def _caps(features: dict[str, str]) -> list[str]:
    return [f"{name.upper()} {value.strip()}".strip() for name, value in features.items()]


def describe_certificate(
    der: bytes, *, verified: bool, problem: str | None = None
) -> dict[str, Any]:
    """Subject, issuer, validity and names of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "expires_in_days": (not_after - datetime.now(UTC)).days,
        "names": names,
        "verified": verified,
        "problem": problem,
    }


def diagnose(
    settings: SmtpSettings,
    password: Callable[[], str] | None = None,
    transcript: Transcript | None = None,
) -> Diagnosis:
    """Connect, inspect, log in if a username is set, and QUIT; never sends a message."""
    report = Diagnosis(settings)
    try:
        smtp = establish(settings, report.info, transcript)
    except CertificateError as exc:
        report.error, report.exit_code = str(exc), exc.exit_code
        _fetch_untrusted(report, exc.reason)
        return report
    except MailcliError as exc:
        report.error, report.exit_code = str(exc), exc.exit_code
        return report
    if report.info.certificate_der:
        report.certificate = describe_certificate(
            report.info.certificate_der, verified=settings.verify
        )
    report.auth = {
        "mechanisms": advertised_auth(smtp),
        "username": settings.username,
        "ok": None,
        "mechanism": None,
        "error": None,
    }
    try:
        if settings.username:
            if password is None:
                raise AuthError(f"a username is set for {settings.endpoint} but no password")
            secret = password()
            started = time.perf_counter()
            try:
                report.auth["mechanism"] = login(smtp, settings, secret)
                report.auth["ok"] = True
            finally:
                report.info.phase("auth", started)
    except MailcliError as exc:
        report.auth["ok"] = False
        report.auth["error"] = exc.message
        report.error, report.exit_code = str(exc), exc.exit_code
    started = time.perf_counter()
    try:
        smtp.quit()
    except Exception:  # the server hung up first: the diagnosis is already complete
        smtp.close()
    report.info.phase("quit", started)
    return report


def _fetch_untrusted(report: Diagnosis, problem: str) -> None:
    """Handshake again without verification, only to show which certificate failed and why."""
    unverified = dataclasses.replace(report.settings, verify=False, username=None)
    probe = SessionInfo()
    try:
        smtp = establish(unverified, probe)
    except MailcliError:
        return
    try:
        smtp.quit()
    except Exception:
        smtp.close()
    if probe.certificate_der:
        report.certificate = describe_certificate(
            probe.certificate_der, verified=False, problem=problem
        )
        report.info.tls_version = probe.tls_version
        report.info.cipher, report.info.cipher_bits = probe.cipher, probe.cipher_bits
