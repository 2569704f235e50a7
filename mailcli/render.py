"""Rendering: sandboxed Jinja2 with StrictUndefined, Markdown to text + HTML.

Templates are compiled once per campaign and rendered once per recipient. A problem that belongs to
one recipient (an undefined variable, a header with a line break) is a `RenderError` that the batch
records against the row; a problem with the template itself is a `DataError` that stops the run.
"""

from __future__ import annotations

import difflib
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import new_context
from jinja2.sandbox import SandboxedEnvironment

from mailcli.campaign import is_template
from mailcli.errors import DataError, InputFileError

if TYPE_CHECKING:
    from markdown_it import MarkdownIt

HTML_SHELL = (
    '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "</head>\n<body>\n{body}</body>\n</html>\n"
)


class RenderError(Exception):
    """A problem rendering one recipient's message; recorded against that row."""


class Rendered(NamedTuple):
    """Everything personalised about one message, ready for the message builder."""

    subject: str
    text: str | None
    html: str | None
    headers: tuple[tuple[str, str], ...] = ()
    unsubscribe: str | None = None
    attachments: tuple[Path, ...] = ()
    unsubscribe_mailto: str | None = None


@dataclass(frozen=True, slots=True)
class Content:
    """The templates of one message, as sources: what a campaign or `mailcli send` provides."""

    folder: Path
    subject: str
    # Each body is a template file, or template source given inline (`mailcli send`).
    text: Path | str | None = None
    html: Path | str | None = None
    markdown: Path | str | None = None
    headers: Mapping[str, str] | None = None
    unsubscribe: str | None = None
    unsubscribe_mailto: str | None = None
    attachments: tuple[tuple[str, Path | None], ...] = ()  # (source, static path or None)
    inline_css: bool = False  # move <style> rules into style="" attributes (for Outlook, Gmail)


# The most characters (or items) one template expression may make: a message is never near it,
# and `{{ "x" * 10**10 }}` would otherwise take the machine's memory.
MAX_SIZE = 10_000_000


class BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox (no attribute escapes, no unsafe calls, bounded `range`) with bounds on
    the two operators that make huge values from small ones, `*` and `**`, and on the padding
    filters (`center`, `indent`)."""

    intercepted_binops = frozenset(["*", "**"])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters["center"] = _bounded_center
        indent = self.filters["indent"]
        self.filters["indent"] = lambda s, width=4, *a, **k: indent(
            s, _bounded_width(width), *a, **k
        )

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > MAX_SIZE:
                    raise SecurityError(
                        f"'*' would make {len(seq) * count:,} items (the limit is {MAX_SIZE:,})"
                    )
        if (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and abs(left).bit_length() * right > 100_000
        ):
            raise SecurityError("'**' would make a number of more than 100,000 bits")
        return super().call_binop(context, operator, left, right)


def _bounded_width(width: Any) -> Any:
    if isinstance(width, int) and width > MAX_SIZE:
        raise SecurityError(f"a width of {width:,} is over the limit of {MAX_SIZE:,}")
    return width


def _bounded_center(value: Any, width: int = 80) -> str:
    return str(value).center(_bounded_width(width))


def _markdown() -> MarkdownIt:
    from markdown_it import MarkdownIt  # only for Markdown campaigns: it costs 30 ms to import

    # Raw HTML is off: data substituted into Markdown must not be able to inject markup.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


class Renderer:
    """Compiles a message's templates once and renders them for each recipient."""

    def __init__(self, content: Content, globals_: Mapping[str, Any] | None = None) -> None:
        self.content = content
        self.folder = content.folder.resolve()
        loader = jinja2.FileSystemLoader(str(self.folder))
        common: dict[str, Any] = {
            "loader": loader,
            "undefined": jinja2.StrictUndefined,
            "keep_trailing_newline": True,
            "auto_reload": False,
            # A plain dict instead of the locked LRU: a campaign has a handful of templates, and
            # every render of a template that extends another looks its parent up.
            "cache_size": -1,
        }
        # Two environments so that anything an HTML template extends or includes is escaped too,
        # whatever its file name, and nothing in the text part is.
        self.text_env = BoundedSandbox(autoescape=False, **common)
        self.html_env = BoundedSandbox(autoescape=True, **common)
        for env in (self.text_env, self.html_env):
            env.globals.update(globals_ or {})
        self._globals: dict[str, Any] = dict(self.text_env.globals)
        self._md = _markdown() if content.markdown else None
        self.subject_t = self._value(content.subject, "subject")
        self.text_t = self._template(self.text_env, content.text, "text")
        self.html_t = self._template(self.html_env, content.html, "html")
        self.markdown_t = self._template(self.text_env, content.markdown, "markdown")
        self.header_ts = tuple(
            (name, self._value(value, f"headers.{name}"))
            for name, value in (content.headers or {}).items()
        )
        self.unsubscribe_mailto_t = (
            self._value(content.unsubscribe_mailto, "unsubscribe.mailto")
            if content.unsubscribe_mailto
            else None
        )
        self.unsubscribe_t = (
            self._value(content.unsubscribe, "unsubscribe") if content.unsubscribe else None
        )
        self.attachment_ts: tuple[tuple[str, Path | jinja2.Template], ...] = tuple(
            (source, static if static is not None else self._string(source, "attachments"))
            for source, static in content.attachments
        )

    def _value(self, source: str, what: str) -> jinja2.Template | str:
        """A one-line template (subject, header, URL); text without Jinja markup stays a
        constant, so a static value costs nothing per recipient."""
        if not is_template(source):
            return source
        return self._string(source, what)

    def _string(
        self, source: str, what: str, env: SandboxedEnvironment | None = None
    ) -> jinja2.Template:
        try:
            return (env or self.text_env).from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise DataError(f"template syntax error in '{what}': {exc.message}") from None

    def _template(
        self, env: SandboxedEnvironment, source: Path | str | None, what: str
    ) -> jinja2.Template | None:
        if source is None:
            return None
        if isinstance(source, str):
            return self._string(source, what, env)
        path = source
        try:
            name = path.resolve().relative_to(self.folder).as_posix()
        except ValueError:
            raise DataError(
                f"template {path} is outside the campaign folder {self.folder}"
            ) from None
        try:
            return env.get_template(name)
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, self.folder) from None
        except jinja2.TemplateNotFound as exc:
            raise InputFileError(f"template not found: {exc.name}", path=path) from None
        except UnicodeDecodeError:
            raise DataError("template is not UTF-8 text", path=path) from None
        except OSError as exc:
            raise InputFileError(f"cannot read template: {exc.strerror}", path=path) from None

    def render(self, context: Mapping[str, Any]) -> Rendered:
        """Render every part for one recipient; raise RenderError for a per-row problem."""
        row_context = context
        try:
            context = {**self._globals, **context}
            subject = _header_value("subject", _render(self.subject_t, context))
            text = _render(self.text_t, context) if self.text_t else None
            html = _render(self.html_t, context) if self.html_t else None
            if self.markdown_t is not None and self._md is not None:
                text = _render(self.markdown_t, context)
                html = HTML_SHELL.format(body=self._md.render(text))
            if html is not None and self.content.inline_css:
                html = inline_css(html)
            if text is None and html is not None:
                text = html_to_text(html)
            headers = tuple(
                (name, _header_value(f"header {name}", _render(t, context)))
                for name, t in self.header_ts
            )
            unsubscribe = _unsubscribe(self.unsubscribe_t, context, ("https://", "mailto:"))
            mailto = _unsubscribe(self.unsubscribe_mailto_t, context, ("mailto:",))
            attachments = tuple(
                item if isinstance(item, Path) else self._attachment(source, item, context)
                for source, item in self.attachment_ts
            )
        except RenderError:
            raise
        except jinja2.TemplateSyntaxError as exc:
            raise _syntax_error(exc, self.folder) from None
        except jinja2.UndefinedError as exc:
            raise RenderError(
                f"{exc.message}{_template_place(exc)}{_did_you_mean(exc.message, row_context)}"
            ) from None
        except SecurityError as exc:
            raise RenderError(
                f"unsafe template operation blocked: {exc}{_template_place(exc)}"
            ) from None
        except jinja2.TemplateNotFound as exc:
            raise RenderError(f"template not found: {exc.name}") from None
        except Exception as exc:  # template code is user code: any failure belongs to the row
            raise RenderError(
                f"template error: {exc.__class__.__name__}: {exc}{_template_place(exc)}"
            ) from None
        return Rendered(subject, text, html, headers, unsubscribe, attachments, mailto)

    def _attachment(self, source: str, template: jinja2.Template, context: dict[str, Any]) -> Path:
        rendered = _render(template, context).strip()
        if not rendered or "\0" in rendered:
            raise RenderError(f"attachment {source!r} renders to an empty or invalid path")
        path = (self.folder / rendered).resolve()
        # resolve() follows symlinks, so a link pointing outside the folder is caught here too.
        if not path.is_relative_to(self.folder):
            raise RenderError(f"attachment path {rendered!r} is outside the campaign folder")
        if not path.is_file():
            raise RenderError(f"attachment not found: {rendered}")
        return path


def _render(template: jinja2.Template | str, context: dict[str, Any]) -> str:
    """Template.render() without its per-call copy of the globals into a new dict.

    The caller's context already holds the globals (merged once per row), so it is shared with
    Jinja as it is; errors still go through Jinja's handler, which points tracebacks at the
    template's own lines. A constant (see `Renderer._value`) is its own rendering.
    """
    if isinstance(template, str):
        return template
    try:
        ctx = new_context(
            template.environment, template.name, template.blocks, context, shared=True
        )
        return "".join(template.root_render_func(ctx))
    except Exception:
        template.environment.handle_exception()
        raise  # handle_exception always raises; this keeps type checkers informed


def inline_css(html: str) -> str:
    """Apply the document's <style> rules as style="" attributes (css-inline), as mail clients
    that ignore <style> (Outlook, some webmail) need."""
    import css_inline

    try:
        return str(css_inline.inline(html))
    except ValueError as exc:
        raise RenderError(f"CSS inlining failed: {exc}") from None


def html_to_text(html: str) -> str:
    """A readable text part for an HTML-only message (inscriptis): paragraphs, lists, tables, and
    links as `text (url)`-style references."""
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    text = get_text(html, ParserConfig(display_links=True))
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def _unsubscribe(
    template: jinja2.Template | str | None, context: dict[str, Any], schemes: tuple[str, ...]
) -> str | None:
    """A rendered unsubscribe target: one line, ASCII, at most 900 characters, right scheme."""
    if template is None:
        return None
    value = _header_value("unsubscribe", _render(template, context))
    if not value.isascii() or len(value) > 900:
        raise RenderError(
            "unsubscribe URL must be ASCII (percent-encode it, e.g. with "
            "`| urlencode`) and at most 900 characters"
        )
    if not value.startswith(schemes):
        raise RenderError(f"unsubscribe URL {value!r} is not {' or '.join(schemes)}")
    return value


def _header_value(what: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise RenderError(f"{what} contains a line break after rendering (header injection?)")
    return value


def _syntax_error(exc: jinja2.TemplateSyntaxError, folder: Path) -> DataError:
    path = Path(exc.filename) if exc.filename else (folder / (exc.name or "?"))
    return DataError(f"template syntax error: {exc.message}", path=path, line=exc.lineno)


_UNDEFINED_NAME = re.compile(r"'(\w+)' is undefined")
# Words Jinja reads as operators or constants: a column with such a name is reachable only as
# row["..."], never as a plain name.
_JINJA_WORDS = frozenset(
    ["and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False", "None"]
)
# How many variables a message lists when none is close to the undefined name.
LISTED_VARIABLES = 12


def _did_you_mean(message: str | None, context: Mapping[str, Any]) -> str:
    """'; did you mean X?' for the row variable closest to an undefined name, else the list of
    the row's variables ('' when the message is not about an undefined name).

    Only called once a row has failed, so a row that renders costs nothing. Names are compared
    ignoring case, spaces, '_' and '-', so `First_Name` finds the column "First Name".
    """
    found = _UNDEFINED_NAME.fullmatch(message or "")
    if found is None:
        return ""
    wanted = found.group(1)
    spellings = _spellings(context)
    if not spellings:
        return ""
    by_key: dict[str, str] = {}
    for key, spelling in spellings.items():
        by_key.setdefault(_fold(key), spelling)
    close = difflib.get_close_matches(_fold(wanted), list(by_key), n=1, cutoff=0.75)
    if close:
        return f"; did you mean {by_key[close[0]]}?"
    shown = list(spellings.values())
    listed = ", ".join(shown[:LISTED_VARIABLES])
    more = len(shown) - LISTED_VARIABLES
    return f"; the variables are: {listed}" + (f" (and {more} more)" if more > 0 else "")


def _spellings(context: Mapping[str, Any]) -> dict[str, str]:
    """Each variable of a row context, as a template writes it: the columns first (in their
    order), those whose names are not identifiers as row["..."], then every other variable."""
    row = context.get("row")
    columns = list(row) if isinstance(row, Mapping) else []
    spellings: dict[str, str] = {}
    for name in [*columns, *context]:
        if not isinstance(name, str) or name in spellings:
            continue
        if name.isidentifier() and name not in _JINJA_WORDS and name in context:
            spellings[name] = name
        elif name in columns:
            spellings[name] = f"row[{_quoted(name)}]"
    return spellings


def _fold(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name.casefold())


def _quoted(name: str) -> str:
    """A Jinja string literal for a column name."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _template_place(exc: BaseException) -> str:
    """' (in NAME line N)' from the traceback Jinja rewrites to point into templates."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        name = frame.filename
        if name.endswith(".py") or name.startswith("<frozen"):
            continue
        shown = "inline template" if name == "<template>" else Path(name).name
        return f" (in {shown}, line {frame.lineno})"
    return ""
