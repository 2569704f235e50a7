"""Tests of the renderer: sandboxed Jinja, StrictUndefined, escaping, Markdown, attachment paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcli.errors import DataError, ExitCode, InputFileError
from mailcli.render import Content, Renderer, RenderError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "camp"
    path.mkdir()
    return path


def write(folder: Path, name: str, text: str) -> Path:
    """Write a template file (creating subfolders) and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def renderer(folder: Path, subject: str = "Hi", **kwargs: object) -> Renderer:
    return Renderer(Content(folder=folder, subject=subject, **kwargs))  # type: ignore[arg-type]


# --- StrictUndefined ---------------------------------------------------------------------------


def test_undefined_variable_names_variable_file_and_line(folder: Path) -> None:
    """An undefined variable raises RenderError naming the variable, the template file and line."""
    text = write(folder, "body.txt.j2", "Hello,\nyour code is {{ coupon }}.\n")
    with pytest.raises(RenderError) as info:
        renderer(folder, text=text).render({"first_name": "Ann"})
    message = str(info.value)
    assert "'coupon' is undefined" in message
    assert "body.txt.j2" in message
    assert "line 2" in message


def test_undefined_variable_in_subject_is_error_not_empty(folder: Path) -> None:
    """An undefined variable in the subject raises instead of rendering an empty string."""
    with pytest.raises(RenderError, match="'first_name' is undefined"):
        renderer(folder, subject="Hi {{ first_name }}", text="x").render({})


def test_undefined_variable_in_condition_is_error(folder: Path) -> None:
    """Testing an undefined variable in `{% if %}` raises rather than counting as false."""
    r = renderer(folder, text="{% if vip %}VIP{% endif %}done")
    with pytest.raises(RenderError, match="vip"):
        r.render({})


def test_undefined_variable_in_included_partial_names_the_partial(folder: Path) -> None:
    """An undefined variable inside an included file is reported with that file's name and line."""
    write(folder, "partials/footer.txt", "Bye\n{{ signature }}\n")
    text = write(folder, "body.txt.j2", "Hi\n{% include 'partials/footer.txt' %}")
    with pytest.raises(RenderError) as info:
        renderer(folder, text=text).render({})
    assert "'signature' is undefined" in str(info.value)
    assert "footer.txt, line 2" in str(info.value)


def row_context(fields: dict[str, str], **vars_: str) -> dict[str, object]:
    """A row's template variables, as `Pipeline.context` makes them."""
    return {"row": fields, **vars_, **fields, "email": fields.get("email", "ann@example.com")}


def undefined_message(folder: Path, source: str, context: dict[str, object]) -> str:
    write(folder, "body.txt.j2", source)
    with pytest.raises(RenderError) as info:
        renderer(folder, text=folder / "body.txt.j2").render(context)
    return str(info.value)


EXPORT = {"email": "ann@example.com", "First Name": "Ann", "last_name": "Lee", "E-mail 2": ""}


@pytest.mark.parametrize(
    ("used", "suggested"),
    [
        ("First_Name", 'row["First Name"]'),  # spaces written as '_'
        ("first_name", 'row["First Name"]'),  # and the case ignored
        ("FirstName", 'row["First Name"]'),  # separators left out
        ("Last_Name", "last_name"),  # an identifier column is a plain name
        ("lastname", "last_name"),
        ("last_nmae", "last_name"),  # a typo
        ("e_mail_2", 'row["E-mail 2"]'),  # hyphens
        ("emial", "email"),
        ("Company", "company"),  # campaign vars are variables too
    ],
)
def test_undefined_variable_suggests_the_closest_one(
    folder: Path, used: str, suggested: str
) -> None:
    """An undefined name close to one of the row's variables (ignoring case, spaces, '_' and
    '-') is answered with that variable as the template must write it; file and line stay."""
    message = undefined_message(folder, f"Hi\n{{{{ {used} }}}}\n", row_context(EXPORT, company="A"))
    assert message == (f"'{used}' is undefined (in body.txt.j2, line 2); did you mean {suggested}?")


def test_undefined_variable_far_from_all_lists_the_variables(folder: Path) -> None:
    """Nothing close: the message lists the row's variables, columns first, in their order."""
    message = undefined_message(folder, "{{ coupon }}", row_context(EXPORT, company="A"))
    assert message == (
        "'coupon' is undefined (in body.txt.j2, line 1); the variables are: "
        'email, row["First Name"], last_name, row["E-mail 2"], row, company'
    )


def test_the_list_of_variables_is_truncated(folder: Path) -> None:
    """A list of 40 columns is not pasted whole into every row's problem."""
    fields = {f"col{i}": "x" for i in range(40)}
    message = undefined_message(folder, "{{ coupon }}", row_context(fields))
    assert message.endswith(
        "; the variables are: col0, col1, col2, col3, col4, col5, col6, col7, col8, col9, "
        "col10, col11 (and 30 more)"
    )


def test_columns_named_like_jinja_words_are_suggested_as_row_keys(folder: Path) -> None:
    """`{{ if }}` cannot be written: a column named 'if' is reachable only as row["if"]."""
    message = undefined_message(folder, "{{ If_ }}", row_context({"email": "a@x.org", "if": "y"}))
    assert message.endswith('; did you mean row["if"]?')


def test_missing_attribute_is_reported_as_jinja_says(folder: Path) -> None:
    """Only undefined names get a suggestion: an attribute missing from an object is left to
    Jinja's own message, which names the attribute."""
    message = undefined_message(folder, "{{ row.First_Name }}", row_context(EXPORT))
    assert message == "'dict object' has no attribute 'First_Name' (in body.txt.j2, line 1)"


def test_defined_variables_render(folder: Path) -> None:
    """Variables given in the context are substituted in subject, text and HTML."""
    text = write(folder, "body.txt.j2", "Hi {{ first_name }}\n")
    html = write(folder, "body.html.j2", "<p>Hi {{ first_name }}</p>\n")
    out = renderer(folder, subject="For {{ first_name }}", text=text, html=html).render(
        {"first_name": "Chloé"}
    )
    assert (out.subject, out.text, out.html) == ("For Chloé", "Hi Chloé\n", "<p>Hi Chloé</p>\n")


# --- escaping ----------------------------------------------------------------------------------


def test_html_template_is_autoescaped(folder: Path) -> None:
    """Markup in data comes out escaped in the HTML part."""
    html = write(folder, "body.html.j2", "<p>{{ name }}</p>")
    out = renderer(folder, html=html).render({"name": "<script>alert(1)</script>"})
    assert out.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"


def test_text_template_and_subject_are_not_escaped(folder: Path) -> None:
    """The text part and the subject keep data verbatim (no HTML entities)."""
    text = write(folder, "body.txt.j2", "{{ name }}")
    out = renderer(folder, subject="{{ name }}", text=text).render({"name": "Tom & <Jerry>"})
    assert out.text == "Tom & <Jerry>"
    assert out.subject == "Tom & <Jerry>"


def test_html_extends_layout_in_subfolder(folder: Path) -> None:
    """An HTML template can extend a layout in a subfolder; data in the block is escaped."""
    write(folder, "layouts/base.html", "<main>{% block body %}{% endblock %}</main>")
    html = write(
        folder,
        "mail.html.j2",
        "{% extends 'layouts/base.html' %}{% block body %}<b>{{ x }}</b>{% endblock %}",
    )
    out = renderer(folder, html=html).render({"x": "<i>"})
    assert out.html == "<main><b>&lt;i&gt;</b></main>"


def test_html_including_txt_partial_still_escapes(folder: Path) -> None:
    """A partial with a .txt name included from the HTML template is escaped too."""
    write(folder, "partials/footer.txt", "<small>{{ x }}</small>")
    html = write(folder, "mail.html.j2", "<p>hi</p>{% include 'partials/footer.txt' %}")
    out = renderer(folder, html=html).render({"x": "<script>"})
    assert out.html == "<p>hi</p><small>&lt;script&gt;</small>"


def test_text_including_partial_is_not_escaped(folder: Path) -> None:
    """A partial included from the text template keeps data verbatim."""
    write(folder, "partials/sig.html", "-- {{ x }}")
    text = write(folder, "mail.txt.j2", "Hi\n{% include 'partials/sig.html' %}")
    out = renderer(folder, text=text).render({"x": "A&B <c>"})
    assert out.text == "Hi\n-- A&B <c>"


# --- sandbox -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ obj.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_python_internals(folder: Path, source: str) -> None:
    """Reaching Python internals from a template is a RenderError, not a crash or a leak."""
    r = renderer(folder, text=source)
    with pytest.raises(RenderError, match="unsafe"):
        r.render({"obj": object})


# --- header injection --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Hi\r\nBcc: victim@example.com", "Hi\nX: y", "Hi\r"])
def test_subject_with_line_break_is_error(folder: Path, value: str) -> None:
    """A subject that renders to a value with CR or LF raises RenderError."""
    with pytest.raises(RenderError, match="line break"):
        renderer(folder, subject="{{ s }}", text="x").render({"s": value})


@pytest.mark.parametrize("value", ["a\r\nBcc: victim@example.com", "a\nb"])
def test_custom_header_with_line_break_is_error(folder: Path, value: str) -> None:
    """A custom header that renders to a value with CR or LF raises RenderError."""
    r = renderer(folder, text="x", headers={"X-Tag": "{{ tag }}"})
    with pytest.raises(RenderError, match="X-Tag"):
        r.render({"tag": value})


def test_custom_header_renders(folder: Path) -> None:
    """A templated custom header renders per recipient."""
    r = renderer(folder, text="x", headers={"X-Customer": "id-{{ cid }}"})
    assert r.render({"cid": 42}).headers == (("X-Customer", "id-42"),)


# --- template files: syntax errors and missing files -------------------------------------------


def test_syntax_error_is_data_error_with_file_and_line(folder: Path) -> None:
    """A Jinja syntax error in a template file raises DataError (exit 65) naming file and line."""
    html = write(folder, "bad.html.j2", "<p>ok</p>\n<p>ok</p>\n{% if %}\n")
    with pytest.raises(DataError) as info:
        renderer(folder, html=html)
    assert info.value.exit_code == ExitCode.DATAERR == 65
    assert info.value.path == str(html)
    assert info.value.line == 3
    assert f"{html}:3" in str(info.value)


def test_syntax_error_in_included_partial_names_partial(folder: Path) -> None:
    """A syntax error in an included partial is a DataError naming the partial and its line."""
    partial = write(folder, "partials/foot.txt", "ok\n{{ unclosed\n")
    text = write(folder, "body.txt.j2", "{% include 'partials/foot.txt' %}")
    with pytest.raises(DataError) as info:
        renderer(folder, text=text).render({})
    assert info.value.path == str(partial)
    assert info.value.line == 2


def test_syntax_error_in_subject_is_data_error(folder: Path) -> None:
    """A syntax error in the subject template raises DataError naming the subject."""
    with pytest.raises(DataError, match="subject"):
        renderer(folder, subject="Hi {{ name", text="x")


def test_missing_template_file_is_input_file_error(folder: Path) -> None:
    """A template file that does not exist raises InputFileError (exit 66) naming it."""
    missing = folder / "nope.txt.j2"
    with pytest.raises(InputFileError) as info:
        renderer(folder, text=missing)
    assert info.value.exit_code == ExitCode.NOINPUT == 66
    assert "nope.txt.j2" in str(info.value)


# --- Markdown ----------------------------------------------------------------------------------


def test_markdown_renders_text_and_html_parts(folder: Path) -> None:
    """Markdown content gives the rendered Markdown source as text and converted HTML."""
    md = write(folder, "mail.md.j2", "# Hello {{ name }}\n\nSome *news*.\n")
    out = renderer(folder, markdown=md).render({"name": "Ann"})
    assert out.text == "# Hello Ann\n\nSome *news*.\n"
    assert out.html is not None
    assert "<h1>Hello Ann</h1>" in out.html
    assert "<p>Some <em>news</em>.</p>" in out.html


def test_markdown_escapes_raw_html_from_data(folder: Path) -> None:
    """Raw HTML substituted into Markdown is escaped in the HTML part, not passed through."""
    md = write(folder, "mail.md.j2", "Hi {{ name }}\n\n{{ block }}\n")
    out = renderer(folder, markdown=md).render(
        {"name": "<script>alert(1)</script>", "block": "<div onclick='x()'>hey</div>"}
    )
    assert out.html is not None
    assert "<script" not in out.html
    assert "<div" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html


# --- templated attachments ---------------------------------------------------------------------


def attach_renderer(folder: Path, source: str = "invoices/{{ f }}") -> Renderer:
    return renderer(folder, text="x", attachments=((source, None),))


def test_templated_attachment_inside_folder(folder: Path) -> None:
    """A templated attachment path inside the campaign folder resolves to that file."""
    pdf = folder / "invoices" / "7.pdf"
    pdf.parent.mkdir()
    pdf.write_bytes(b"%PDF")
    out = attach_renderer(folder).render({"f": "7.pdf"})
    assert out.attachments == (pdf.resolve(),)


def test_static_attachment_passes_through(folder: Path) -> None:
    """A static attachment path is passed on unchanged."""
    pdf = folder / "brochure.pdf"
    pdf.write_bytes(b"%PDF")
    out = renderer(folder, text="x", attachments=(("brochure.pdf", pdf),)).render({})
    assert out.attachments == (pdf,)


def test_templated_attachment_dotdot_escape_is_error(folder: Path) -> None:
    """A rendered attachment path that climbs out with ../ raises RenderError."""
    (folder.parent / "secret.txt").write_text("s")
    (folder / "invoices").mkdir()
    with pytest.raises(RenderError, match="outside"):
        attach_renderer(folder).render({"f": "../../secret.txt"})


def test_templated_attachment_absolute_outside_is_error(folder: Path) -> None:
    """A rendered absolute path outside the campaign folder raises RenderError."""
    outside = folder.parent / "passwd"
    outside.write_text("root")
    with pytest.raises(RenderError, match="outside"):
        attach_renderer(folder, "{{ f }}").render({"f": str(outside)})


def test_templated_attachment_symlink_outside_is_error(folder: Path) -> None:
    """A file inside the folder that is a symlink to a file outside raises RenderError."""
    outside = folder.parent / "private.key"
    outside.write_text("key")
    (folder / "invoices").mkdir()
    (folder / "invoices" / "7.pdf").symlink_to(outside)
    with pytest.raises(RenderError, match="outside"):
        attach_renderer(folder).render({"f": "7.pdf"})


def test_templated_attachment_missing_is_error(folder: Path) -> None:
    """A per-recipient attachment that does not exist raises RenderError naming it."""
    (folder / "invoices").mkdir()
    with pytest.raises(RenderError, match=r"invoices/404\.pdf"):
        attach_renderer(folder).render({"f": "404.pdf"})


# --- unsubscribe -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://acme.example/u/tok", "mailto:unsub@acme.example"])
def test_unsubscribe_https_or_mailto_renders(folder: Path, url: str) -> None:
    """An unsubscribe template rendering to https:// or mailto: is accepted as is."""
    assert renderer(folder, text="x", unsubscribe="{{ u }}").render({"u": url}).unsubscribe == url


@pytest.mark.parametrize("url", ["ftp://acme.example/u", "javascript:alert(1)", "/u/tok", ""])
def test_unsubscribe_other_schemes_are_rejected(folder: Path, url: str) -> None:
    """An unsubscribe template rendering to anything but https:// or mailto: raises RenderError."""
    with pytest.raises(RenderError, match="unsubscribe"):
        renderer(folder, text="x", unsubscribe="{{ u }}").render({"u": url})


def test_unsubscribe_plain_http_is_rejected(folder: Path) -> None:
    """An unsubscribe URL over plain http:// raises RenderError (only https:// or mailto:)."""
    with pytest.raises(RenderError, match="unsubscribe"):
        renderer(folder, text="x", unsubscribe="{{ u }}").render({"u": "http://acme.example/u"})
