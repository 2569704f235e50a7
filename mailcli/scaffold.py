"""`mailcli init NAME`: a new campaign folder that runs as it is and explains itself.

The campaign file lists every key, the optional ones commented out with what they do; the
templates show the text and HTML parts sharing one unsubscribe token; the list uses the
reserved example domains (RFC 2606), so nothing reaches a real person by accident.
"""

from __future__ import annotations

import re
from pathlib import Path

from mailcli.errors import CantCreateError, UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

CAMPAIGN = """\
# Campaign '{name}', made by `mailcli init`. Paths are relative to this file.
# Try it without sending anything anywhere:
#   mailcli preview {folder}/campaign.yaml --row 1
#   mailcli batch {folder}/campaign.yaml --dry-run
#   mailcli batch {folder}/campaign.yaml --sandbox      (.eml files in ./outbox)
# Then point it at your server (smtp: below, or a profile in config.yaml) and run
#   mailcli batch {folder}/campaign.yaml
# Every run resumes where the last one stopped; nobody gets the message twice.

name: {name}                      # names the progress file: .mailcli/{name}.sqlite
from: "Example Team <team@example.com>"
# reply_to: "support@example.com"
subject: "Hello {{{{ first_name }}}}, news from {{{{ company }}}}"

text: templates/message.txt.j2   # plain-text part (Jinja)
html: templates/message.html.j2  # HTML part (Jinja, autoescaped); both -> multipart/alternative
# markdown: templates/message.md.j2   # instead of text + html: one Markdown template for both

recipients: recipients.csv       # a header row; an `email` column; every column is a variable
# recipients: {{path: recipients.csv, email_column: email, name_column: name,
#              encoding: utf-8, delimiter: ","}}

vars:                            # variables for every message
  company: Example
  unsubscribe_base: https://example.com/unsubscribe

# One-click unsubscribe (RFC 8058), which Gmail and Yahoo require of bulk senders:
unsubscribe: "{{{{ unsubscribe_base }}}}?u={{{{ token | urlencode }}}}"
# unsubscribe: {{endpoint: "https://example.com/u", secret_env: MAILCLI_UNSUBSCRIBE_SECRET}}
#   mailcli's own endpoint instead (`mailcli unsubscribe serve`): a signed link per message,
#   {{{{ unsubscribe_url }}}} in the templates; the secret from the variable or the keyring
list_id: "Example News <news.example.com>"

# attachments: [files/guide.pdf, "invoices/{{{{ token }}}}.pdf"]   # static, or one per recipient
# inline_images: {{logo: files/logo.png}}     # <img src="cid:logo"> in the HTML
# inline_css: true                          # apply <style> rules as style="" (for Outlook)
# headers: {{X-Campaign: {name}}}
# dkim: {{domain: example.com, selector: s1, key: dkim-private.pem}}   # `mailcli dkim keygen`

# smtp: {{host: smtp.example.com, port: 587, security: starttls, username: team@example.com}}
# smtp: {{profile: default}}        # or settings from config.yaml (the password never goes here)
# api: {{provider: postmark}}       # or an HTTP API provider instead of SMTP: postmark, resend,
#                                  # sendgrid, mailgun (+ domain:); the token from its variable
#                                  # (POSTMARK_SERVER_TOKEN, ...) or the keyring, never from here
rate: "10/s"                     # never faster than this; also "600/min", "5000/h"
retry: {{attempts: 3, delay: 30s}} # a 4xx reply is tried again after 30 s, then 60 s
# connections: 4                   # sessions at once, sharing the rate (default 1)
# suppression: false               # only for transactional mail: skip the suppression list
#                                  # (default: the list every campaign shares; `mailcli suppress`)
# state: .mailcli/{name}.sqlite    # where progress is kept (this is the default); or
#   postgresql://mailcli@db.example.com/mailcli to share the campaign between hosts
"""

TEXT = (
    "Hello {{ first_name }},\n"
    "\n"
    "this is {{ company }}'s first message to you, sent with mailcli.\n"
    "Every column of recipients.csv is a variable here: your plan is {{ plan }}.\n"
    "\n"
    "-- \n"  # the signature separator of RFC 3676: dash, dash, space
    "The {{ company }} team\n"
    "Unsubscribe: {{ unsubscribe_base }}?u={{ token | urlencode }}\n"
)

HTML = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>News from {{ company }}</title>
</head>
<body style="font-family: Helvetica, Arial, sans-serif; color: #222; max-width: 600px;">
<h1>Hello {{ first_name }},</h1>
<p>this is <strong>{{ company }}</strong>'s first message to you, sent with mailcli.</p>
<p>Every column of recipients.csv is a variable here: your plan is <em>{{ plan }}</em>.</p>
<hr>
<p style="font-size: 12px; color: #777;">
The {{ company }} team &middot;
<a href="{{ unsubscribe_base }}?u={{ token | urlencode }}">Unsubscribe</a>
</p>
</body>
</html>
"""

RECIPIENTS = """\
email,name,first_name,plan,token
ann@example.com,Ann Lee,Ann,Pro,t-1f3a
bob@example.org,Bob Müller,Bob,Free,t-7c2e
chloe@example.net,Chloé Dubois,Chloé,Team,t-9d41
"""

GITIGNORE = """\
# mailcli's progress (keep it on the machine that sends) and sandbox output
.mailcli/
outbox/
"""


def create_campaign(folder: Path) -> list[Path]:
    """Write a new campaign into `folder` (created; it must not exist or must be empty).

    Returns the files written. The campaign is named after the folder.
    """
    name = folder.resolve().name
    if not NAME_RE.match(name):
        raise UsageError(
            f"{name!r} cannot name a campaign: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UsageError(f"{folder} already exists and is not an empty folder; nothing written")
    files = {
        "campaign.yaml": CAMPAIGN.format(name=name, folder=folder.as_posix()),
        "templates/message.txt.j2": TEXT,
        "templates/message.html.j2": HTML,
        "recipients.csv": RECIPIENTS,
        ".gitignore": GITIGNORE,
    }
    written: list[Path] = []
    try:
        for relative, content in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise CantCreateError(
            f"cannot write the campaign: {exc.strerror}", path=exc.filename
        ) from None
    return written
