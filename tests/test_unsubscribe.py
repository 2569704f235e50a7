"""One-click unsubscribe (RFC 8058): signed tokens, the endpoint over real HTTP (wsgiref on a free
loopback port, the module-level WSGI app, `mailcli unsubscribe serve` as a real process), and a
campaign delivered into a real aiosmtpd server whose List-Unsubscribe URL is then POSTed."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Recorder, make_campaign, server_args
from typer.testing import CliRunner

from mailcli import unsubscribe
from mailcli.campaign import load_campaign
from mailcli.cli import app as cli
from mailcli.compose import Message
from mailcli.errors import ConfigError, DataError, ExitCode
from mailcli.sandbox import SmtpServer
from mailcli.suppression import Location, Reason, Suppressed
from mailcli.unsubscribe import InvalidToken, Signer, Subscriber

SECRET = "s3cret-for-tests-0123456789abcdef"
OTHER_SECRET = "another-secret-entirely-0123456789"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}  # the body of RFC 8058's POST
runner = CliRunner()


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def list_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The suppression list of this test, in tmp_path, also as $MAILCLI_SUPPRESSION."""
    path = tmp_path / "suppression.sqlite"
    monkeypatch.setenv("MAILCLI_SUPPRESSION", str(path))
    return path


def entries(path: Path) -> list[Suppressed]:
    """Everyone on a list (none when the file was never created)."""
    if not path.exists():
        return []
    found = Location(str(path)).open(create=False)
    try:
        return list(found.entries())
    finally:
        found.close()


def entry(path: Path, email: str) -> Suppressed | None:
    found = Location(str(path)).open(create=False)
    try:
        return found.get(email)
    finally:
        found.close()


class Running:
    """A wsgiref server from `unsubscribe.make_server` on a free loopback port, in a thread."""

    def __init__(self, application: Any) -> None:
        self.server = unsubscribe.make_server(application, "127.0.0.1", 0)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/u"

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy set in the environment must not come between the test and
    # the server on loopback.
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def endpoint(list_path: Path) -> Iterator[Running]:
    """The app with SECRET, writing to `list_path`, served on a free loopback port."""
    application = unsubscribe.make_app(SECRET, Location(str(list_path)))
    with Running(application) as running:
        yield running
    application.close()


def altered(token: str, index: int) -> str:
    """The token with one base64 character changed (A<->B keeps it valid base64)."""
    swapped = "B" if token[index] == "A" else "A"
    return token[:index] + swapped + token[index + 1 :]


# --- tokens -------------------------------------------------------------------------------------


def test_a_token_round_trips_and_names_the_campaign_and_normalised_address() -> None:
    """A token is URL-safe base64 without padding, `payload.signature`, and verifies back to
    the campaign and the address as the state compares it (case-folded)."""
    signer = Signer(SECRET)
    token = signer.token("spring-news", "Ann.Lee@Example.COM")
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert signer.verify(token) == Subscriber("spring-news", "ann.lee@example.com")
    assert signer.token("spring-news", "ann.lee@example.com") == token
    assert signer.url("https://acme.example/u", "spring-news", "ann.lee@example.com") == (
        f"https://acme.example/u?u={token}"
    )
    assert SECRET not in repr(signer)


@pytest.mark.parametrize(
    ("make", "forged"),
    [
        pytest.param(lambda t, o: altered(t, 3), True, id="altered-payload"),
        pytest.param(lambda t, o: altered(t, t.index(".") + 2), True, id="altered-signature"),
        pytest.param(lambda t, o: o, True, id="other-secret"),
        pytest.param(lambda t, o: t.split(".")[1] + "." + t.split(".")[0], None, id="swapped"),
        pytest.param(lambda t, o: t[:-6], None, id="truncated"),
        pytest.param(lambda t, o: t.split(".")[0], False, id="no-signature"),
        pytest.param(lambda t, o: t + "=", False, id="padding"),
        pytest.param(lambda t, o: t.replace("-", "+").replace("_", "/") + "+/", False, id="b64"),
        pytest.param(lambda t, o: "", False, id="empty"),
        pytest.param(lambda t, o: "a" * 5000, False, id="huge"),
    ],
)
def test_a_token_that_is_not_ours_is_rejected(
    make: Callable[[str, str], str], forged: bool | None
) -> None:
    """Altered, re-signed with another secret, cut short or mangled: InvalidToken, `forged`
    when it decodes but the signature does not match (None: either, depending on the bytes)."""
    token = Signer(SECRET).token("news", "ann@example.com")
    other = Signer(OTHER_SECRET).token("news", "ann@example.com")
    with pytest.raises(InvalidToken) as caught:
        Signer(SECRET).verify(make(token, other))
    if forged is not None:
        assert caught.value.forged is forged


def test_a_short_secret_is_a_configuration_error_that_says_how_to_make_one() -> None:
    """Fewer than 16 bytes: exit 78, with the command that makes a good one; the secret itself
    is never in the message."""
    with pytest.raises(ConfigError) as caught:
        Signer("short-secret")
    assert caught.value.exit_code == ExitCode.CONFIG
    assert "secrets.token_urlsafe(32)" in str(caught.value)
    assert "short-secret" not in str(caught.value)


def test_the_secret_comes_from_its_variable_then_the_keyring(
    test_keyring: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve_secret: the named variable first, then the keyring entry `unsubscribe:NAME`
    (service mailcli), else exit 78 naming both."""
    import keyring

    monkeypatch.setenv("SHOP_UNSUB", SECRET)
    assert unsubscribe.resolve_secret("SHOP_UNSUB") == SECRET
    monkeypatch.delenv("SHOP_UNSUB")
    keyring.set_password("mailcli", "unsubscribe:SHOP_UNSUB", OTHER_SECRET)
    assert unsubscribe.resolve_secret("SHOP_UNSUB") == OTHER_SECRET
    with pytest.raises(ConfigError) as caught:
        unsubscribe.resolve_secret("NOBODY_SET_THIS")
    assert caught.value.exit_code == ExitCode.CONFIG
    text = str(caught.value)
    assert "$NOBODY_SET_THIS" in text and "unsubscribe:NOBODY_SET_THIS" in text
    assert OTHER_SECRET not in text and SECRET not in text


def test_password_set_stores_the_secret_where_campaigns_look_for_it(test_keyring: Path) -> None:
    """`mailcli password set --unsubscribe VAR` (stdin) keeps it as `unsubscribe:VAR`; a short
    one is refused and never echoed; `delete` removes it."""
    runner = CliRunner()
    short = runner.invoke(cli, ["password", "set", "--unsubscribe", "SHOP_UNSUB"], input="tiny\n")
    assert short.exit_code == 78 and "tiny" not in short.output
    stored = runner.invoke(
        cli, ["password", "set", "--unsubscribe", "SHOP_UNSUB"], input=SECRET + "\n"
    )
    assert stored.exit_code == 0, stored.output
    assert "unsubscribe:SHOP_UNSUB" in stored.output and SECRET not in stored.output
    assert unsubscribe.resolve_secret("SHOP_UNSUB") == SECRET
    bad = runner.invoke(cli, ["password", "set", "--unsubscribe", "no such"], input="x\n")
    assert bad.exit_code == 2
    gone = runner.invoke(cli, ["password", "delete", "--unsubscribe", "SHOP_UNSUB"])
    assert gone.exit_code == 0
    with pytest.raises(ConfigError):
        unsubscribe.resolve_secret("SHOP_UNSUB")
    again = runner.invoke(cli, ["password", "delete", "--unsubscribe", "SHOP_UNSUB"])
    assert again.exit_code == 2 and "no unsubscribe secret is stored" in again.output


def test_a_short_secret_in_the_environment_is_rejected_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, no_keyring: None
) -> None:
    """A secret too short to be safe is exit 78 naming the variable, not its value."""
    monkeypatch.setenv("MAILCLI_UNSUBSCRIBE_SECRET", "tiny-value")
    with pytest.raises(ConfigError) as caught:
        unsubscribe.resolve_secret()
    assert "$MAILCLI_UNSUBSCRIBE_SECRET" in str(caught.value)
    assert "tiny-value" not in str(caught.value)


# --- the endpoint over HTTP ---------------------------------------------------------------------


def test_post_unsubscribes_and_a_second_post_is_idempotent(
    endpoint: Running, http: httpx.Client, list_path: Path
) -> None:
    """RFC 8058's POST with a valid token: 200 'You are unsubscribed' and the address is on the
    list as unsubscribed from the token's campaign; the same POST again is 200, one entry."""
    url = Signer(SECRET).url(endpoint.url, "news", "Ann@Example.com")
    for _ in range(2):
        answer = http.post(url, data=ONE_CLICK)
        assert answer.status_code == 200
        assert "You are unsubscribed" in answer.text
        assert answer.headers["Cache-Control"] == "no-store"
    found = entry(list_path, "ann@example.com")
    assert found is not None
    assert (found.reason, found.campaign) == (Reason.UNSUBSCRIBED, "news")
    assert len(entries(list_path)) == 1


def test_get_shows_a_confirmation_form_and_unsubscribes_nobody(
    endpoint: Running, http: httpx.Client, list_path: Path
) -> None:
    """A GET (what a mail scanner does) changes nothing: it shows a page, with strict headers,
    whose form POSTs to the same URL; submitting that form unsubscribes."""
    token = Signer(SECRET).token("news", "bob+news@example.org")
    url = f"{endpoint.url}?u={token}"
    page = http.get(url)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["X-Robots-Tag"].startswith("noindex")
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "<script" not in page.text
    assert "bob+news@example.org" in page.text
    form = re.search(r'<form method="post" action="([^"]+)">', page.text)
    assert form is not None
    assert http.head(url).status_code == 200
    assert entries(list_path) == []
    answer = http.post(httpx.URL(url).join(form.group(1)), data=ONE_CLICK)
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text
    assert [e.email for e in entries(list_path)] == ["bob+news@example.org"]


def test_shown_values_are_html_escaped(http: httpx.Client, list_path: Path) -> None:
    """An address with HTML in it (a quoted local part) is shown as text, never as markup."""
    application = unsubscribe.make_app(SECRET, Location(str(list_path)))
    with Running(application) as running:
        url = Signer(SECRET).url(running.url, "news", '"<b>x</b>"@example.com')
        page = http.get(url)
    assert page.status_code == 200
    assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param(lambda t, o: f"u={altered(t, 2)}", 403, id="altered-payload"),
        pytest.param(lambda t, o: f"u={altered(t, t.index('.') + 1)}", 403, id="altered-sig"),
        pytest.param(lambda t, o: f"u={o}", 403, id="other-secret"),
        pytest.param(lambda t, o: f"u={t[:-10]}", None, id="truncated"),
        pytest.param(lambda t, o: f"u={t.split('.')[0]}", 400, id="payload-only"),
        pytest.param(lambda t, o: "u=%3Cscript%3E", 400, id="garbage"),
        pytest.param(lambda t, o: "", 400, id="missing"),
        pytest.param(lambda t, o: f"u={t}&u={t}", 400, id="twice"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_forged_or_broken_token_changes_nothing(
    endpoint: Running,
    http: httpx.Client,
    list_path: Path,
    method: str,
    query: Callable[[str, str], str],
    status: int | None,
) -> None:
    """400 for a malformed token, 403 for a bad signature: a short 'not valid' page, and
    nobody is suppressed."""
    token = Signer(SECRET).token("news", "ann@example.com")
    other = Signer(OTHER_SECRET).token("news", "ann@example.com")
    answer = http.request(method, f"{endpoint.url}?{query(token, other)}", data=ONE_CLICK)
    if status is None:
        assert answer.status_code in (400, 403)
    else:
        assert answer.status_code == status
    assert "This link is not valid" in answer.text
    assert "Traceback" not in answer.text
    assert entries(list_path) == []


def test_other_methods_are_405_with_allow(endpoint: Running, http: httpx.Client) -> None:
    """PUT, DELETE, PATCH: 405 and the methods that are allowed."""
    url = Signer(SECRET).url(endpoint.url, "news", "ann@example.com")
    for method in ("PUT", "DELETE", "PATCH"):
        answer = http.request(method, url, data=ONE_CLICK)
        assert answer.status_code == 405
        assert answer.headers["Allow"] == "GET, HEAD, POST"


def test_a_content_length_that_is_not_a_number_is_400(list_path: Path) -> None:
    """Called as a WSGI server would call it: a Content-Length of "\u00b2" (a digit to
    str.isdigit, not to int) or "-1" is a 400, never a server error."""
    application = unsubscribe.make_app(SECRET, Location(str(list_path)))
    token = Signer(SECRET).url("http://127.0.0.1/u", "news", "ann@example.com").split("?u=")[1]
    statuses: list[str] = []
    for length in ("\u00b2", "-1", "12abc"):
        statuses.clear()
        environ = {
            "REQUEST_METHOD": "POST",
            "QUERY_STRING": f"u={token}",
            "CONTENT_LENGTH": length,
            "wsgi.input": io.BytesIO(b"List-Unsubscribe=One-Click"),
        }
        body = b"".join(application(environ, lambda status, headers: statuses.append(status)))
        assert statuses[0].startswith("400"), (length, statuses)
        assert b"Traceback" not in body
    assert entries(list_path) == []
    application.close()


def test_a_body_over_the_limit_is_413_and_unsubscribes_nobody(
    endpoint: Running, http: httpx.Client, list_path: Path
) -> None:
    """A POST body over 4 KiB is refused unread, even with a valid token."""
    url = Signer(SECRET).url(endpoint.url, "news", "ann@example.com")
    answer = http.post(url, content=b"List-Unsubscribe=One-Click&" + b"x" * 5000)
    assert answer.status_code == 413
    assert entries(list_path) == []
    # a body just under the limit, of any form (RFC 8058 allows multipart too), is fine
    assert http.post(url, content=b"x" * 4000).status_code == 200


def test_a_list_that_cannot_be_written_is_503_with_retry_after(
    tmp_path: Path, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The list's folder cannot be made (a file is in the way): 503 with Retry-After, a short
    page without a traceback, and the reason in the log (never the secret)."""
    (tmp_path / "blocker").write_text("a file, not a folder\n", encoding="utf-8")
    application = unsubscribe.make_app(SECRET, Location(str(tmp_path / "blocker" / "s.sqlite")))
    caplog.set_level(logging.INFO, logger="mailcli.unsubscribe")
    with Running(application) as running:
        url = Signer(SECRET).url(running.url, "news", "ann@example.com")
        answer = http.post(url, data=ONE_CLICK)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()
    assert "Traceback" not in answer.text and "try again" in answer.text
    logged = caplog.text
    assert "could not record an unsubscribe (campaign news)" in logged
    assert SECRET not in logged


def test_the_request_log_leaves_out_the_signature(
    endpoint: Running, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """One line per request; the token's signature is not in it (a leaked log gives nobody a
    working link)."""
    caplog.set_level(logging.INFO, logger="mailcli.unsubscribe")
    token = Signer(SECRET).token("news", "ann@example.com")
    payload, signature = token.split(".")
    assert http.get(f"{endpoint.url}?u={token}").status_code == 200

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if "GET /u" in r.getMessage()]

    # The server thread writes its line once the answer has gone: wait for it (at most 5 s).
    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = logged()
    assert len(lines) == 1
    assert payload in lines[0] and signature not in lines[0] and " 200 " in lines[0]


@pytest.fixture
def fresh_module_app() -> Iterator[Any]:
    """`mailcli.unsubscribe.app` as a fresh process would have it, and forgotten afterwards."""
    unsubscribe.app.reset()
    yield unsubscribe.app
    unsubscribe.app.reset()


def test_the_module_level_app_is_configured_from_the_environment(
    fresh_module_app: Any,
    http: httpx.Client,
    list_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_keyring: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`gunicorn 'mailcli.unsubscribe:app'`: without a secret it answers 503 (and logs why);
    with $MAILCLI_UNSUBSCRIBE_SECRET_ENV naming the variable, it verifies with that secret and
    writes to $MAILCLI_SUPPRESSION."""
    monkeypatch.delenv("MAILCLI_UNSUBSCRIBE_SECRET", raising=False)
    monkeypatch.setenv("MAILCLI_UNSUBSCRIBE_SECRET_ENV", "SHOP_UNSUB")
    monkeypatch.delenv("SHOP_UNSUB", raising=False)
    with Running(fresh_module_app) as running:
        url = Signer(SECRET).url(running.url, "shop", "zoe@example.net")
        not_yet = http.post(url, data=ONE_CLICK)
        assert not_yet.status_code == 503 and "Retry-After" in not_yet.headers
        assert "$SHOP_UNSUB" in caplog.text
        monkeypatch.setenv("SHOP_UNSUB", SECRET)
        assert http.post(url, data=ONE_CLICK).status_code == 200
        forged = Signer(OTHER_SECRET).url(running.url, "shop", "yan@example.net")
        assert http.post(forged, data=ONE_CLICK).status_code == 403
    found = entry(list_path, "zoe@example.net")
    assert found is not None and found.campaign == "shop"
    assert [e.email for e in entries(list_path)] == ["zoe@example.net"]


# --- the command --------------------------------------------------------------------------------


def start_serving(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, str]:
    """`mailcli unsubscribe serve ARGS --port 0` as a real process; its base URL and the line
    that announced it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcli", "unsubscribe", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    found = re.search(r"listening on (http://127\.0\.0\.1:\d+/)", first)
    if found is None:
        proc.kill()
        pytest.fail(f"mailcli unsubscribe serve did not start: {first}{proc.stderr.read()}")
    return proc, found.group(1), first


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err


def child_env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, **extra}


def test_the_command_serves_until_ctrl_c(list_path: Path, http: httpx.Client) -> None:
    """Without a campaign: the secret from --secret-env, the list from $MAILCLI_SUPPRESSION;
    one line says where it listens and which list it writes; Ctrl-C stops it with exit 0. The
    secret and the token's signature never reach its output."""
    proc, base, first = start_serving(
        "--secret-env", "SHOP_UNSUB", env=child_env(SHOP_UNSUB=SECRET)
    )
    assert str(list_path) in first
    try:
        url = Signer(SECRET).url(base + "u", "shop", "ann@example.com")
        assert http.get(url).status_code == 200
        assert http.post(url, data=ONE_CLICK).status_code == 200
        forged = Signer(OTHER_SECRET).url(base + "u", "shop", "bob@example.com")
        assert http.post(forged, data=ONE_CLICK).status_code == 403
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert [e.email for e in entries(list_path)] == ["ann@example.com"]
    assert "stopped" in err
    assert SECRET not in err and url.split(".")[-1] not in err
    assert re.search(r'"POST /u\?u=[A-Za-z0-9_-]+\.\[signature\] HTTP/1\.1" 200', err), err


def test_the_command_with_a_campaign_uses_its_secret_and_its_list(
    tmp_path: Path, http: httpx.Client, list_path: Path
) -> None:
    """With a campaign: its secret_env and its `suppression:` list (not the default one), and
    the start line names that list; SIGTERM stops it too."""
    files = make_campaign(
        tmp_path / "camp",
        extra="unsubscribe: {endpoint: 'https://acme.example/u', secret_env: CAMP_SECRET}\n"
        "suppression: unsubscribed.sqlite\n",
    )
    own_list = files.folder / "unsubscribed.sqlite"
    proc, base, first = start_serving(str(files.yaml), env=child_env(CAMP_SECRET=OTHER_SECRET))
    try:
        url = Signer(OTHER_SECRET).url(base + "u", "test-campaign", "chloe@example.net")
        assert http.post(url, data=ONE_CLICK).status_code == 200
    finally:
        code, err = stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert str(own_list) in first
    assert [e.email for e in entries(own_list)] == ["chloe@example.net"]
    assert entries(list_path) == []


def test_the_command_without_a_secret_exits_78_naming_both_options(
    no_keyring: None, list_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No variable, no keyring: exit 78 before listening, saying how to provide one."""
    monkeypatch.delenv("MAILCLI_UNSUBSCRIBE_SECRET", raising=False)
    result = runner.invoke(cli, ["unsubscribe", "serve", "--port", "0"])
    assert result.exit_code == ExitCode.CONFIG
    assert "$MAILCLI_UNSUBSCRIBE_SECRET" in result.stderr
    assert "unsubscribe:MAILCLI_UNSUBSCRIBE_SECRET" in result.stderr
    assert "Traceback" not in result.output


def test_the_command_refuses_a_campaign_without_an_endpoint(
    campaign_files: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign without `unsubscribe.endpoint` has nothing to serve: exit 78."""
    monkeypatch.setenv("MAILCLI_UNSUBSCRIBE_SECRET", SECRET)
    result = runner.invoke(cli, ["unsubscribe", "serve", str(campaign_files.yaml)])
    assert result.exit_code == ExitCode.CONFIG
    assert "no one-click endpoint" in result.stderr


# --- the sending side ---------------------------------------------------------------------------

TEXT = "Hi {{ first_name }},\nnews.\n\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML = '<p>Hi {{ first_name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'


def one_click_campaign(folder: Path, port: int, *, extra: str = "") -> Path:
    files = make_campaign(
        folder,
        text=TEXT,
        html=HTML,
        extra=f"unsubscribe: {{endpoint: 'http://127.0.0.1:{port}/u', "
        "secret_env: SHOP_UNSUB, mailto: 'mailto:unsub@example.com'}\n"
        "suppression: unsubscribed.sqlite\n" + extra,
    )
    return files.yaml


def unsubscribe_urls(message: EmailMessage) -> list[str]:
    return re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))


def test_a_delivered_message_unsubscribes_exactly_its_recipient(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    list_path: Path,
) -> None:
    """End to end: `batch` delivers a campaign with `unsubscribe: {endpoint, secret_env,
    mailto}` into a real SMTP server; each message has its own signed URL in List-Unsubscribe
    (after the mailto), List-Unsubscribe-Post, and the same URL as the visible link of the text
    and HTML parts. POSTing one message's URL to the endpoint suppresses exactly its recipient;
    a token altered from a message suppresses nobody."""
    monkeypatch.setenv("SHOP_UNSUB", SECRET)
    # Bound first, so the campaign can name its port; the app comes from the campaign after.
    running = Running(lambda environ, start_response: [])
    campaign = one_click_campaign(tmp_path / "camp", running.port)
    result = runner.invoke(cli, ["batch", str(campaign), *server_args(smtp_server), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sent"] == 3
    assert SECRET not in result.output
    by_rcpt = {m.rcpt_tos[0]: m.message for m in recorder.messages}
    urls: dict[str, str] = {}
    for address, message in by_rcpt.items():
        mailto, url = unsubscribe_urls(message)
        assert mailto == "mailto:unsub@example.com"
        assert url.startswith(f"http://127.0.0.1:{running.port}/u?u=")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        assert text is not None and html is not None
        assert f"Unsubscribe: {url}\r\n" in text.get_content()
        assert f'<a href="{url}">' in html.get_content()
        urls[address] = url
    assert len(set(urls.values())) == 3
    own_list = campaign.parent / "unsubscribed.sqlite"
    running.server.set_app(unsubscribe.campaign_app(load_campaign(campaign)))
    with running:
        ann, bob = urls["ann@example.com"], urls["bob@example.org"]
        # Bob's signature on Ann's payload: a forgery
        forged = ann.rsplit(".", 1)[0] + "." + bob.rsplit(".", 1)[1]
        assert http.post(forged, data=ONE_CLICK).status_code == 403
        assert http.post(altered(bob, bob.index("u=") + 4), data=ONE_CLICK).status_code == 403
        assert entries(own_list) == []
        assert http.get(bob).status_code == 200  # a scanner following the link
        assert entries(own_list) == []
        assert http.post(bob, data=ONE_CLICK).status_code == 200
    suppressed = entries(own_list)
    assert [(e.email, e.reason, e.campaign) for e in suppressed] == [
        ("bob@example.org", Reason.UNSUBSCRIBED, "test-campaign")
    ]
    assert entries(list_path) == []  # the campaign's own list, not the default one


def test_a_missing_secret_stops_every_path_before_anything_is_sent(
    tmp_path: Path,
    smtp_server: SmtpServer,
    recorder: Recorder,
    no_keyring: None,
    list_path: Path,
) -> None:
    """`batch`, `batch --dry-run` and `preview` of a campaign with an endpoint need the secret
    (the exact bytes hold the signed URL): without it, exit 78 naming the variable, no
    connection made, no state written."""
    campaign = one_click_campaign(tmp_path / "camp", 8080)
    for args in (
        ["batch", str(campaign), *server_args(smtp_server)],
        ["batch", str(campaign), "--dry-run"],
        ["preview", str(campaign)],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == ExitCode.CONFIG, (args, result.output)
        assert "$SHOP_UNSUB" in result.stderr and "unsubscribe:SHOP_UNSUB" in result.stderr
    assert recorder.connections == 0 and recorder.messages == []
    assert not (campaign.parent / ".mailcli").exists()


def test_preview_shows_the_signed_url_that_the_endpoint_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, list_path: Path
) -> None:
    """`preview --format raw` builds the message with the recipient's own URL (ASCII, one
    line), which verifies to the campaign and the row's address."""
    monkeypatch.setenv("SHOP_UNSUB", SECRET)
    campaign = one_click_campaign(tmp_path / "camp", 8080)
    result = runner.invoke(cli, ["preview", str(campaign), "--row", "2", "--format", "raw"])
    assert result.exit_code == 0, result.output
    found = re.search(r"http://127\.0\.0\.1:8080/u\?u=([A-Za-z0-9_.-]+)", result.stdout)
    assert found is not None
    assert Signer(SECRET).verify(found.group(1)) == Subscriber("test-campaign", "bob@example.org")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.stdout


def test_unsubscribe_url_without_an_endpoint_is_an_undefined_variable(tmp_path: Path) -> None:
    """A template that uses `unsubscribe_url` in a campaign without `unsubscribe.endpoint`
    fails as any undefined variable does (exit 65, naming it)."""
    files = make_campaign(tmp_path / "camp", text=TEXT)
    result = runner.invoke(cli, ["preview", str(files.yaml)])
    assert result.exit_code == ExitCode.DATAERR, result.output
    assert "'unsubscribe_url' is undefined" in result.output


def test_an_endpoint_counts_as_one_click_in_the_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mailto beside an endpoint is not 'only a mailto'; a plain-http (loopback) endpoint
    gets a warning that recipients cannot reach it; an https one gets none."""
    from mailcli.checks import campaign_warnings

    local = load_campaign(one_click_campaign(tmp_path / "a", 8080))
    warnings = campaign_warnings(local)
    assert not any("only a mailto" in w for w in warnings)
    assert any("plain http" in w for w in warnings)
    files = make_campaign(
        tmp_path / "b",
        extra="unsubscribe: {endpoint: 'https://acme.example/u', "
        "mailto: 'mailto:u@acme.example'}\n",
    )
    assert campaign_warnings(load_campaign(files.yaml)) == []


def test_the_library_message_takes_a_loopback_http_unsubscribe_url() -> None:
    """mailcli.Message: an http URL on a loopback host is one-click (for tests against a local
    endpoint); on any other host it is refused."""
    local = Message(
        subject="S",
        recipients=["ann@example.com"],
        body="b",
        sender="news@acme.example",
        unsubscribe="http://localhost:8080/u?u=abc.def",
    ).as_bytes()
    assert b"List-Unsubscribe: <http://localhost:8080/u?u=abc.def>" in local
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in local
    with pytest.raises(DataError, match="https:// URL or a mailto:"):
        Message(
            subject="S",
            recipients=["ann@example.com"],
            body="b",
            sender="news@acme.example",
            unsubscribe="http://acme.example/u",
        ).as_bytes()


def test_is_one_click() -> None:
    """https anywhere; http only on 127.0.0.1, localhost or ::1."""
    assert unsubscribe.is_one_click("https://acme.example/u?u=x")
    assert unsubscribe.is_one_click("http://127.0.0.1:8080/u")
    assert unsubscribe.is_one_click("http://[::1]:8080/u")
    assert unsubscribe.is_one_click("http://localhost/u")
    assert not unsubscribe.is_one_click("http://acme.example/u")
    assert not unsubscribe.is_one_click("http://127.0.0.1.acme.example/u")
    assert not unsubscribe.is_one_click("https:///u")
    assert not unsubscribe.is_one_click("mailto:u@acme.example")
