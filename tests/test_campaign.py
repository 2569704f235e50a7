"""Campaign files: a valid file becomes typed values; every mistake names the file and the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import make_campaign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcli.campaign import (
    TOP_KEYS,
    Attachment,
    Campaign,
    DkimConfig,
    Rate,
    RecipientsSource,
    Retry,
    SmtpConfig,
    load_campaign,
    parse_duration,
    parse_rate,
)
from mailcli.errors import ConfigError, ExitCode, InputFileError, MailcliError

# Five lines, so a key appended to BASE is on line 6.
BASE = """\
name: test-campaign
from: "Test Sender <sender@example.com>"
subject: Hello
text: body.txt.j2
recipients: list.csv
"""

FULL = """\
name: spring-news
from: "Acme News <news@acme.example>"
reply_to: "support@acme.example"
subject: "Spring offers for {{ first_name }}"
text: templates/spring.txt.j2
html: templates/spring.html.j2
recipients:
  path: data/subscribers.csv
  email_column: Mail
  name_column: Full Name
  encoding: cp1252
  delimiter: ";"
vars: {company: Acme, year: 2024}
attachments:
  - brochure.pdf
  - "invoices/{{ customer_id }}.pdf"
headers: {X-Campaign: spring}
unsubscribe: "https://acme.example/u/{{ token }}"
list_id: "Acme News <news.acme.example>"
inline_images: {logo: logo.png}
dkim: {domain: acme.example, selector: s1, key: dkim-private.pem}
smtp: {profile: work, host: smtp.acme.example, port: 587, security: starttls, username: news}
rate: "600/min"
retry: {attempts: 5, delay: "2m"}
state: state/spring.sqlite
"""


def campaign_file(tmp_path: Path, text: str) -> Path:
    """A campaign folder (templates + CSV from conftest) whose YAML is exactly `text`."""
    files = make_campaign(tmp_path / "camp")
    files.yaml.write_text(textwrap.dedent(text), encoding="utf-8")
    return files.yaml


def config_error(path: Path, line: int | None, match: str) -> ConfigError:
    """Load `path`, expecting a ConfigError (exit 78) that names the file and `line`."""
    with pytest.raises(ConfigError, match=match) as info:
        load_campaign(path)
    assert info.value.exit_code == ExitCode.CONFIG == 78
    assert info.value.path == str(path)
    assert info.value.line == line
    return info.value


def full_campaign_folder(folder: Path) -> Path:
    """Write FULL and every file it refers to into `folder`."""
    for name in (
        "templates/spring.txt.j2",
        "templates/spring.html.j2",
        "brochure.pdf",
        "logo.png",
        "dkim-private.pem",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (folder / "data").mkdir()
    (folder / "data/subscribers.csv").write_text("Mail;Full Name\na@example.com;Ann\n")
    (folder / "campaign.yaml").write_text(FULL, encoding="utf-8")
    return folder / "campaign.yaml"


# --- valid campaigns ---------------------------------------------------------------------------


def test_full_campaign_loads_every_key_as_typed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every contract key loads into typed values, with paths relative to the campaign's folder."""
    folder = tmp_path / "camp"
    folder.mkdir()
    full_campaign_folder(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_campaign(Path("../camp/campaign.yaml"))
    f = folder.resolve()
    assert (c.path, c.folder, c.name) == (f / "campaign.yaml", f, "spring-news")
    assert (c.sender, c.reply_to) == ("Acme News <news@acme.example>", "support@acme.example")
    assert c.subject == "Spring offers for {{ first_name }}"
    assert (c.text, c.html, c.markdown) == (
        f / "templates/spring.txt.j2",
        f / "templates/spring.html.j2",
        None,
    )
    assert c.recipients == RecipientsSource(
        path=f / "data/subscribers.csv",
        email_column="Mail",
        name_column="Full Name",
        encoding="cp1252",
        delimiter=";",
    )
    assert dict(c.vars) == {"company": "Acme", "year": 2024}
    assert c.attachments == (
        Attachment("brochure.pdf", f / "brochure.pdf", 15),
        Attachment("invoices/{{ customer_id }}.pdf", None, 16),
    )
    assert dict(c.headers) == {"X-Campaign": "spring"}
    assert c.unsubscribe == "https://acme.example/u/{{ token }}"
    assert c.list_id == "Acme News <news.acme.example>"
    assert dict(c.inline_images) == {"logo": f / "logo.png"}
    assert c.dkim == DkimConfig(domain="acme.example", selector="s1", key=f / "dkim-private.pem")
    assert c.smtp == SmtpConfig(
        profile="work", host="smtp.acme.example", port=587, security="starttls", username="news"
    )
    assert c.rate == Rate(count=600, per_s=60)
    assert c.retry == Retry(attempts=5, delay_s=120.0)
    assert c.state_path == f / "state/spring.sqlite"


def test_loaded_campaign_is_immutable(tmp_path: Path) -> None:
    """The Campaign and its mappings are frozen: nothing downstream can change the config."""
    c = load_campaign(make_campaign(tmp_path / "camp").yaml)
    with pytest.raises(AttributeError):
        c.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.vars["company"] = "Evil"  # type: ignore[index]


def test_minimal_campaign_gets_contract_defaults(tmp_path: Path) -> None:
    """Optional keys default: no rate, 3 attempts / 30 s, state in .mailcli/<name>.sqlite."""
    path = campaign_file(tmp_path, BASE)
    c = load_campaign(path)
    assert (c.rate, c.retry, c.smtp, c.dkim) == (None, Retry(3, 30.0), SmtpConfig(), None)
    assert c.state_path == path.parent / ".mailcli" / "test-campaign.sqlite"
    assert c.recipients == RecipientsSource(path=path.parent / "list.csv")
    assert (c.attachments, dict(c.headers), dict(c.vars)) == ((), {}, {})


def test_markdown_alone_is_a_body(tmp_path: Path) -> None:
    """`markdown` without text/html is a valid body, resolved beside the campaign file."""
    path = campaign_file(tmp_path, BASE.replace("text: body.txt.j2", "markdown: body.md.j2"))
    (path.parent / "body.md.j2").write_text("# Hi\n", encoding="utf-8")
    c = load_campaign(path)
    assert (c.markdown, c.text, c.html) == (path.parent / "body.md.j2", None, None)


@pytest.mark.parametrize("yaml_delimiter", ['"\\t"', "'\\t'", '"\t"'])
def test_recipients_tab_delimiter(tmp_path: Path, yaml_delimiter: str) -> None:
    """A tab delimiter may be the YAML escape "\\t", the two characters '\\t' or a real tab."""
    text = BASE.replace(
        "recipients: list.csv", f"recipients: {{path: list.csv, delimiter: {yaml_delimiter}}}"
    )
    assert load_campaign(campaign_file(tmp_path, text)).recipients.delimiter == "\t"


def test_recipients_mapping_defaults(tmp_path: Path) -> None:
    """The mapping form with only `path` gets the email column, UTF-8 and a comma."""
    text = BASE.replace("recipients: list.csv", "recipients: {path: list.csv}")
    path = campaign_file(tmp_path, text)
    assert load_campaign(path).recipients == RecipientsSource(
        path=path.parent / "list.csv",
        email_column="email",
        name_column=None,
        encoding="utf-8",
        delimiter=",",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("1.5", 1.5),
        (45, 45.0),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts_units(value: object, expected: float) -> None:
    """Durations with ms/s/m/h suffixes or bare numbers become seconds."""
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["soon", "-1s", "5 days", "", True, -3])
def test_parse_duration_rejects_nonsense(value: object) -> None:
    """Text that is not a duration, booleans and negative numbers raise ValueError."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "count", "per_s"),
    [
        ("10/s", 10, 1),
        ("600/min", 600, 60),
        ("5000/h", 5000, 3600),
        ("5/10s", 5, 10),
        (" 2 / hour ", 2, 3600),
        ("0.5/s", 0.5, 1),
    ],
)
def test_parse_rate_examples(text: str, count: float, per_s: float) -> None:
    """The contract's rate spellings parse to a count per window of seconds."""
    assert parse_rate(text) == Rate(count=count, per_s=per_s)


# --- errors: unknown, forbidden and duplicate keys ---------------------------------------------


def test_unknown_top_level_key_names_key_and_line(tmp_path: Path) -> None:
    """An unknown top-level key is exit 78 naming the key, the file and its line."""
    err = config_error(campaign_file(tmp_path, BASE + "colour: red\n"), 6, "unknown key 'colour'")
    assert err.hint is not None and "subject" in err.hint


def test_unknown_nested_key_names_dotted_key_and_line(tmp_path: Path) -> None:
    """An unknown key inside `smtp` is named as `smtp.foo` with its own line."""
    text = BASE + "smtp:\n  host: mail.example.com\n  foo: 1\n"
    config_error(campaign_file(tmp_path, text), 8, r"unknown key 'smtp\.foo'")


@pytest.mark.parametrize(
    ("extra", "line", "key"),
    [
        ("password: hunter2\n", 6, "password"),
        ("smtp:\n  host: h\n  password: hunter2\n", 8, "smtp.password"),
        ("retry:\n  password: x\n", 7, "retry.password"),
    ],
)
def test_password_anywhere_is_a_config_error(
    tmp_path: Path, extra: str, line: int, key: str
) -> None:
    """A `password` key is exit 78 at its line, with a hint naming the safe alternatives."""
    err = config_error(campaign_file(tmp_path, BASE + extra), line, f"'{key}' is not allowed")
    assert err.hint is not None and "MAILCLI_PASSWORD" in err.hint


def test_password_under_recipients_mapping_is_rejected(tmp_path: Path) -> None:
    """`password` inside the recipients mapping is refused like anywhere else."""
    text = BASE.replace("recipients: list.csv", "recipients:\n  path: list.csv\n  password: x")
    config_error(campaign_file(tmp_path, text), 7, "'recipients.password' is not allowed")


def test_duplicate_top_level_key_names_both_lines(tmp_path: Path) -> None:
    """A key given twice is reported at the second line, naming the first."""
    text = BASE + "subject: Again\n"
    config_error(campaign_file(tmp_path, text), 6, r"duplicate key 'subject' .*line 3")


def test_duplicate_nested_key(tmp_path: Path) -> None:
    """A key given twice inside a section is reported with its dotted name and line."""
    text = BASE + "smtp:\n  host: a\n  host: b\n"
    config_error(campaign_file(tmp_path, text), 8, r"duplicate key 'smtp\.host' .*line 7")


# --- errors: types and required keys -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        (
            BASE.replace("subject: Hello", "subject: [a, b]"),
            3,
            "'subject': must be a string, not a",
        ),
        (BASE + 'smtp: {port: "25"}\n', 6, r"'smtp\.port': must be a port number, not a string"),
        (BASE + "smtp: {port: 70000}\n", 6, r"'smtp\.port': 70000 is not a port number"),
        (BASE + "vars: [a, b]\n", 6, "'vars': must be a mapping, not a list"),
        (BASE + "vars: {not valid: 1}\n", 6, "'vars': variable name 'not valid'"),
        (BASE + "smtp: [a]\n", 6, "'smtp': must be a mapping, not a list"),
        (BASE + "smtp: {security: ssl}\n", 6, r"'smtp\.security': must be one of"),
        (BASE + "attachments: brochure.pdf\n", 6, "'attachments': must be a list"),
        (BASE.replace("name: test-campaign", "name: my campaign!"), 1, "'name': use letters"),
        (BASE.replace("subject: Hello", "subject: '  '"), 3, "'subject': must not be empty"),
    ],
)
def test_wrong_type_or_value_names_key_and_line(
    tmp_path: Path, text: str, line: int, match: str
) -> None:
    """A value of the wrong type or shape is exit 78 naming the key and its line."""
    config_error(campaign_file(tmp_path, text), line, match)


@pytest.mark.parametrize("key", ["name", "subject", "recipients"])
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    """Each required key, when absent, is named in an exit-78 error at the mapping's line."""
    text = "".join(
        line for line in BASE.splitlines(keepends=True) if not line.startswith(f"{key}:")
    )
    config_error(campaign_file(tmp_path, text), 1, f"missing required key '{key}'")


def test_null_required_key_counts_as_missing(tmp_path: Path) -> None:
    """`subject:` with no value is reported as missing, not as a type error."""
    text = BASE.replace("subject: Hello", "subject:")
    config_error(campaign_file(tmp_path, text), 1, "missing required key 'subject'")


def test_no_body_is_a_config_error(tmp_path: Path) -> None:
    """A campaign without text, html or markdown is exit 78 saying which keys it needs."""
    text = BASE.replace("text: body.txt.j2\n", "")
    config_error(campaign_file(tmp_path, text), 1, "at least one of 'text', 'html' or 'markdown'")


def test_markdown_with_text_is_a_config_error(tmp_path: Path) -> None:
    """`markdown` together with `text` is exit 78 at the markdown line."""
    path = campaign_file(tmp_path, BASE + "markdown: body.md.j2\n")
    (path.parent / "body.md.j2").write_text("# Hi\n", encoding="utf-8")
    config_error(path, 6, "'markdown': renders both")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (BASE.replace('"Test Sender <sender@example.com>"', '"not an address"'), 2, "from"),
        (BASE.replace('"Test Sender <sender@example.com>"', "a@b.com, c@d.com"), 2, "from"),
        (BASE + "reply_to: support@\n", 6, "reply_to"),
    ],
)
def test_invalid_address_is_a_config_error(tmp_path: Path, text: str, line: int, key: str) -> None:
    """An invalid `from` or `reply_to` is exit 78 naming the key and line."""
    config_error(campaign_file(tmp_path, text), line, f"'{key}': ")


@pytest.mark.parametrize("rate", ["10", "ten/s", "10/fortnight", "0/s", "-1/s", "5/0s", "[1]"])
def test_bad_rate_is_a_config_error(tmp_path: Path, rate: str) -> None:
    """A rate that is not `N/s`, `N/min`, `N/h` (or zero) is exit 78 at its line."""
    config_error(campaign_file(tmp_path, BASE + f"rate: {rate}\n"), 6, "'rate': invalid rate")


@pytest.mark.parametrize("delay", ["soon", "-1", "5 days", "[1]"])
def test_bad_retry_delay_is_a_config_error(tmp_path: Path, delay: str) -> None:
    """A retry delay that is not a duration is exit 78 naming `retry.delay` and its line."""
    text = BASE + f"retry:\n  attempts: 2\n  delay: {delay}\n"
    config_error(campaign_file(tmp_path, text), 8, r"'retry\.delay': invalid duration")


def test_retry_delay_must_be_finite(tmp_path: Path) -> None:
    """A NaN retry delay (YAML `.nan`) is refused: it is no duration to wait."""
    text = BASE + "retry:\n  attempts: 2\n  delay: .nan\n"
    config_error(campaign_file(tmp_path, text), 8, r"'retry\.delay'")


@pytest.mark.parametrize("attempts", ["0", "-2", "two", "1.5"])
def test_bad_retry_attempts_is_a_config_error(tmp_path: Path, attempts: str) -> None:
    """`retry.attempts` must be a whole number of at least 1, reported at its line."""
    text = BASE + f"retry:\n  attempts: {attempts}\n  delay: 1s\n"
    config_error(campaign_file(tmp_path, text), 7, r"'retry\.attempts': must be")


def test_retry_with_only_attempts_keeps_default_delay(tmp_path: Path) -> None:
    """`retry: {attempts: 2}` keeps the default 30 s delay."""
    c = load_campaign(campaign_file(tmp_path, BASE + "retry: {attempts: 2}\n"))
    assert c.retry == Retry(attempts=2, delay_s=30.0)


def test_retry_with_only_delay_keeps_default_attempts(tmp_path: Path) -> None:
    """`retry: {delay: 10s}` keeps the default of 3 attempts."""
    c = load_campaign(campaign_file(tmp_path, BASE + "retry: {delay: 10s}\n"))
    assert c.retry == Retry(attempts=3, delay_s=10.0)


# --- errors: the YAML itself -------------------------------------------------------------------


def test_yaml_syntax_error_reports_its_line(tmp_path: Path) -> None:
    """Invalid YAML is exit 78 naming the line of the problem."""
    text = BASE.replace("subject: Hello", "subject: Hello: there")
    config_error(campaign_file(tmp_path, text), 3, "invalid YAML: mapping values are not allowed")


def test_unclosed_flow_list_reports_a_line(tmp_path: Path) -> None:
    """An unclosed `[` is reported with the line where the parser gave up."""
    text = BASE + "attachments: [a.pdf, b.pdf\nrate: 1/s\n"
    config_error(campaign_file(tmp_path, text), 7, "invalid YAML")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    """An empty campaign file (or only comments) is exit 78 saying it is empty."""
    config_error(campaign_file(tmp_path, text), None, "the campaign file is empty")


@pytest.mark.parametrize(("text", "line"), [("- a\n- b\n", 1), ("just text\n", 1), ("\n\n42\n", 3)])
def test_non_mapping_top_level_is_a_config_error(tmp_path: Path, text: str, line: int) -> None:
    """A list or scalar at the top level is exit 78 saying a mapping is needed."""
    config_error(campaign_file(tmp_path, text), line, "must be a mapping of keys")


def test_non_utf8_campaign_file_is_a_config_error(tmp_path: Path) -> None:
    """A campaign file in Latin-1 is exit 78 saying it is not UTF-8."""
    path = campaign_file(tmp_path, BASE)
    path.write_bytes(BASE.replace("Hello", "Caf\xe9").encode("latin-1"))
    config_error(path, None, "not UTF-8")


@pytest.mark.parametrize("subject", ["!custom Hello", "2024-02-30", "!!int ten", "!!binary '@@@'"])
def test_value_yaml_cannot_construct_is_a_config_error(tmp_path: Path, subject: str) -> None:
    """A value with an unknown tag or an impossible date is exit 78 at its line, not a crash."""
    text = BASE.replace("subject: Hello", f"subject: {subject}")
    config_error(campaign_file(tmp_path, text), 3, "subject")


def test_unhashable_key_in_vars_is_a_config_error(tmp_path: Path) -> None:
    """A complex (list) key inside `vars` is exit 78 at its line, not a crash."""
    config_error(campaign_file(tmp_path, BASE + "vars: {? [a, b] : c}\n"), 6, "vars")


# --- errors: files the campaign refers to ------------------------------------------------------


def test_missing_campaign_file_is_an_input_error(tmp_path: Path) -> None:
    """A campaign file that does not exist is exit 66 naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(InputFileError, match="campaign file not found") as info:
        load_campaign(path)
    assert (info.value.exit_code, info.value.path) == (66, str(path))


@pytest.mark.parametrize(
    ("old", "new", "line", "missing"),
    [
        ("text: body.txt.j2", "text: missing.txt.j2", 4, "missing.txt.j2"),
        ("recipients: list.csv", "recipients: nobody.csv", 5, "nobody.csv"),
        ("recipients: list.csv", "recipients: {path: data/nobody.csv}", 5, "data/nobody.csv"),
    ],
)
def test_missing_referenced_file_is_an_input_error(
    tmp_path: Path, old: str, new: str, line: int, missing: str
) -> None:
    """A missing template or CSV is exit 66 at its line, the message giving the full path."""
    path = campaign_file(tmp_path, BASE.replace(old, new))
    with pytest.raises(InputFileError, match="not found") as info:
        load_campaign(path)
    assert (info.value.exit_code, info.value.path, info.value.line) == (66, str(path), line)
    assert str(path.parent / missing) in info.value.message


def test_missing_static_attachment_is_an_input_error(tmp_path: Path) -> None:
    """A static attachment that does not exist is exit 66 at the line of its list entry."""
    path = campaign_file(tmp_path, BASE + "attachments:\n  - body.txt.j2\n  - brochure.pdf\n")
    with pytest.raises(InputFileError, match="'attachments': file not found") as info:
        load_campaign(path)
    assert (info.value.exit_code, info.value.path, info.value.line) == (66, str(path), 8)
    assert str(path.parent / "brochure.pdf") in info.value.message


def test_templated_attachment_is_not_checked_at_load(tmp_path: Path) -> None:
    """An attachment path with Jinja is kept as a template, to be resolved per recipient."""
    c = load_campaign(campaign_file(tmp_path, BASE + "attachments: ['inv/{{ id }}.pdf']\n"))
    assert c.attachments == (Attachment("inv/{{ id }}.pdf", None, 6),)


def test_template_path_that_is_a_folder_is_an_input_error(tmp_path: Path) -> None:
    """A body path naming a folder is exit 66 saying so."""
    path = campaign_file(tmp_path, BASE.replace("text: body.txt.j2", "text: ."))
    with pytest.raises(InputFileError, match="is a folder") as info:
        load_campaign(path)
    assert info.value.line == 4


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("text: body.txt.j2", 'text: "body\\0.txt"', 4),
        ("text: body.txt.j2", "text: " + "a" * 300 + ".txt", 4),
        ("recipients: list.csv", 'recipients: "list\\0.csv"', 5),
        ("name: test-campaign", 'name: test-campaign\nstate: "s\\0.sqlite"', 2),
    ],
)
def test_impossible_path_is_a_mailcli_error(tmp_path: Path, old: str, new: str, line: int) -> None:
    """A path with a NUL byte or an over-long name is a mailcli error at its line, not a crash."""
    path = campaign_file(tmp_path, BASE.replace(old, new))
    with pytest.raises(MailcliError) as info:
        load_campaign(path)
    assert info.value.exit_code in (66, 78)
    assert info.value.line == line


# --- errors: headers and list metadata ---------------------------------------------------------


@pytest.mark.parametrize("value", ['"Acme News"', '"news.acme.example"', '"Acme <news>"'])
def test_invalid_list_id_is_a_config_error(tmp_path: Path, value: str) -> None:
    """A list_id without a trailing <label.domain> is exit 78 citing RFC 2919."""
    config_error(
        campaign_file(tmp_path, BASE + f"list_id: {value}\n"),
        6,
        "'list_id': must end with <list-label.domain>",
    )


@pytest.mark.parametrize("name", ["From", "message-id", "List-Unsubscribe", "CONTENT-TYPE"])
def test_header_owned_by_mailcli_is_a_config_error(tmp_path: Path, name: str) -> None:
    """Headers mailcli writes itself cannot be set in `headers`, whatever their case."""
    text = BASE + f"headers:\n  X-Ok: fine\n  {name}: x\n"
    config_error(campaign_file(tmp_path, text), 8, f"'headers.{name}': is set by mailcli")


@pytest.mark.parametrize("value", ['"a\\nb"', '"a\\rb"', "|\n    line one\n    line two"])
def test_header_value_with_line_break_is_a_config_error(tmp_path: Path, value: str) -> None:
    """A header value containing CR or LF is exit 78 at its line (no header injection)."""
    text = BASE + f"headers:\n  X-Note: {value}\n"
    config_error(campaign_file(tmp_path, text), 7, r"'headers\.X-Note': must be a single line")


def test_invalid_header_name_is_a_config_error(tmp_path: Path) -> None:
    """A header name with a space is exit 78 at its line."""
    config_error(
        campaign_file(tmp_path, BASE + "headers: {X Bad: 1}\n"), 6, "is not a valid header name"
    )


def test_subject_with_line_break_is_a_config_error(tmp_path: Path) -> None:
    """A subject containing a newline is refused (it becomes a header)."""
    text = BASE.replace("subject: Hello", 'subject: "Hello\\nBcc: victim@example.com"')
    config_error(campaign_file(tmp_path, text), 3, "'subject': must be a single line")


def test_unsubscribe_must_be_a_url(tmp_path: Path) -> None:
    """An unsubscribe value that is not http(s) or mailto is exit 78 at its line."""
    config_error(
        campaign_file(tmp_path, BASE + "unsubscribe: acme.example/u\n"),
        6,
        "'unsubscribe': must be an https:// URL",
    )


# --- properties --------------------------------------------------------------------------------

windows = st.one_of(
    st.sampled_from([1.0, 60.0, 3600.0]), st.integers(min_value=1, max_value=86_400).map(float)
)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(min_value=1, max_value=10_000_000), per_s=windows)
def test_str_of_rate_parses_back(count: int, per_s: float) -> None:
    """parse_rate(str(rate)) gives the same rate back, for any whole count and window."""
    rate = Rate(count=float(count), per_s=per_s)
    assert parse_rate(str(rate)) == rate


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=100_000),
    unit=st.sampled_from(["s", "sec", "second", "m", "min", "minutes", "h", "hr", "hours"]),
)
def test_rate_text_round_trips_through_str(count: int, unit: str) -> None:
    """Any `N/unit` spelling parses, prints canonically, and that text parses to the same rate."""
    rate = parse_rate(f"{count}/{unit}")
    assert rate.count == count
    assert rate.per_s == {"s": 1.0, "m": 60.0, "h": 3600.0}[unit[0]]
    assert parse_rate(str(rate)) == rate


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"\A-?[0-9.]{0,6} ?/ ?[0-9.]{0,3} ?[a-z]{0,7}\Z")))
def test_parse_rate_only_raises_value_error(text: str) -> None:
    """Arbitrary text either parses to a positive rate or raises ValueError, never anything else."""
    try:
        rate = parse_rate(text)
    except ValueError:
        return
    assert rate.count > 0 and rate.per_s > 0


yaml_values = st.sampled_from(
    [
        "x",
        "''",
        "~",
        "1",
        "-5",
        "1.5",
        "true",
        "[a, b]",
        "{a: 1}",
        "body.txt.j2",
        "list.csv",
        "10/s",
        "'{{ x }}'",
        '"a\\nb"',
        "!custom x",
        "2024-02-30",
        "&anchor y",
        "*anchor",
        "{path: list.csv, delimiter: ';'}",
        "{attempts: 2, delay: 5s}",
        "{X-A: b}",
        "|\n  block",
    ]
)
yaml_lines = st.lists(
    st.tuples(st.sampled_from([*TOP_KEYS, "password", "other"]), yaml_values).map(
        lambda kv: f"{kv[0]}: {kv[1]}"
    ),
    max_size=8,
).map(lambda lines: "\n".join(lines) + "\n")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(st.text(), yaml_lines, yaml_lines.map(lambda extra: BASE + extra)))
def test_any_text_gives_a_campaign_or_a_mailcli_error(tmp_path: Path, text: str) -> None:
    """Any text as a campaign file loads or raises a MailcliError: never another exception."""
    folder = tmp_path / "camp"
    if not folder.exists():
        make_campaign(folder)
    path = folder / "campaign.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        result = load_campaign(path)
    except MailcliError as exc:
        assert exc.exit_code in (66, 78)
        return
    assert isinstance(result, Campaign)
