"""`mailcli init NAME`: a new campaign folder that runs as it is and explains itself.

The campaign file lists every key, the optional ones commented out with what they do; the
templates show the text and HTML parts sharing one unsubscribe token; the list uses the
reserved example domains (RFC 2606), so nothing reaches a real person by accident.
`mailcli init NAME --sequence` writes a three-step onboarding sequence instead (`steps:`), with
a text, a Markdown and an HTML step, sign-up times in two zones, and a sending window.
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

# A sequence instead of one message: several messages per recipient, each at its own time
# (`mailcli init NAME --sequence` writes a whole one that runs as it is):
# steps:                         # in order; `after` is counted from `start`
#   - {{name: welcome, after: 0d, text: templates/welcome.txt.j2}}
#   - {{name: tips, after: 2d, subject: "Three tips", markdown: templates/tips.md.j2}}
# start: "{{{{ signed_up_at }}}}"    # when each recipient's sequence starts; default: first run
# timezone: "{{{{ tz }}}}"           # the recipient's zone (IANA), or one for all; default UTC
# window: "09:00-18:00"            # local hours in which a step may go out

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

SEQUENCE_CAMPAIGN = """\
# Sequence '{name}', made by `mailcli init --sequence`: three onboarding messages, each sent to
# each recipient at its own time after they signed up. Paths are relative to this file.
# Cron runs a sequence again and again (every 10 minutes: see examples/cron/crontab in mailcli's
# repository); each run sends whatever has come due, at most one step per recipient, and nobody
# gets a step twice.
# Try it without sending anything anywhere:
#   mailcli batch {folder}/campaign.yaml --dry-run --at 2026-03-03T10:00Z -v
#                                          (what a run at that moment would send, and to whom)
#   mailcli preview {folder}/campaign.yaml --step tips --row 1
#   mailcli batch {folder}/campaign.yaml --sandbox      (what is due now, to ./outbox)
#   mailcli status {folder}/campaign.yaml --sandbox     (where each step stands)
# Then point it at your server (smtp: below, or a profile in config.yaml) and run, from cron,
#   mailcli batch {folder}/campaign.yaml

name: {name}                      # names the progress file: .mailcli/{name}.sqlite
from: "Example Team <team@example.com>"
# reply_to: "support@example.com"

start: "{{{{ signed_up_at }}}}"      # when each recipient's sequence starts: a column rendered to
                                 # an ISO 8601 date (2026-03-03: midnight in the recipient's
                                 # zone) or date-time (2026-03-02T08:15 in that zone; with Z or
                                 # +01:00, that instant); default: when a run first meets the row
timezone: "{{{{ tz }}}}"             # each recipient's zone, an IANA name (Europe/Paris) from a
                                 # column, or one for all (timezone: Europe/Paris); default UTC
window: "09:00-18:00"            # local hours in which a step may go out, 09:00 up to (not
                                 # including) 18:00: a step that comes due at night waits

steps:                           # in order; each step is one message, due `after` from start
  # A step's name is its identity in the progress file: never rename a step that has gone out
  # (a renamed step is a new step, and everyone who had the old one would get it).
  - name: welcome
    after: 0d                    # as soon as the recipient signs up (inside the window)
    subject: "Welcome to {{{{ company }}}}, {{{{ first_name }}}}"
    text: templates/welcome.txt.j2        # a plain-text message
  - name: tips
    after: 2d                    # w, d, h, m: 2d, 1w, 36h, 1d12h; days and weeks are calendar
                                 # days in the recipient's zone, hours and minutes elapsed time
    subject: "Three tips for your first week"
    markdown: templates/tips.md.j2        # one Markdown template: a text and an HTML part
  - name: offer
    after: 7d                    # and never sooner than 5 days (7d - 2d) after tips went out,
                                 # so a late run keeps the spacing
    if: "plan == 'free'"         # a Jinja expression over the row; where false, the step is
                                 # skipped for that recipient (recorded, never sent later)
    subject: "{{{{ first_name }}}}, 20% off {{{{ company }}}} Pro"
    html: templates/offer.html.j2         # an HTML message
    # headers: {{X-Step: offer}}   # a step may set any message key: subject, text, html,
    #   markdown, attachments, headers; what it does not set comes from the top level (a
    #   step's text, html or markdown replaces all three bodies of the top level)

# With steps:, the top-level subject and bodies are optional: a step that sets none takes these.
# subject: "News from {{{{ company }}}}"
# text: templates/message.txt.j2
# html: templates/message.html.j2
# markdown: templates/message.md.j2

recipients: recipients.csv       # a header row; an `email` column; every column is a variable
# recipients: {{path: recipients.csv, email_column: email, name_column: name,
#              encoding: utf-8, delimiter: ","}}
# A row whose start or zone does not parse is an invalid row, named by `batch --dry-run`. A
# recipient whose row leaves the list, or who is suppressed, gets no further steps.

vars:                            # variables for every message
  company: Example
  unsubscribe_base: https://example.com/unsubscribe

# One-click unsubscribe (RFC 8058), which Gmail and Yahoo require of bulk senders:
unsubscribe: "{{{{ unsubscribe_base }}}}?u={{{{ token | urlencode }}}}"
# unsubscribe: {{endpoint: "https://example.com/u", secret_env: MAILCLI_UNSUBSCRIBE_SECRET}}
#   mailcli's own endpoint instead (`mailcli unsubscribe serve`): a signed link per message,
#   {{{{ unsubscribe_url }}}} in the templates; the secret from the variable or the keyring
list_id: "Example Onboarding <onboarding.example.com>"

# attachments: [files/guide.pdf]            # for every step that sets none of its own
# inline_images: {{logo: files/logo.png}}     # <img src="cid:logo"> in the HTML
# inline_css: true                          # apply <style> rules as style="" (for Outlook)
# headers: {{X-Campaign: {name}}}   # for every step that sets none of its own
# dkim: {{domain: example.com, selector: s1, key: dkim-private.pem}}   # `mailcli dkim keygen`

# smtp: {{host: smtp.example.com, port: 587, security: starttls, username: team@example.com}}
# smtp: {{profile: default}}        # or settings from config.yaml (the password never goes here)
# api: {{provider: postmark}}       # or an HTTP API provider instead of SMTP: postmark, resend,
#                                  # sendgrid, mailgun (+ domain:); the token from its variable
#                                  # (POSTMARK_SERVER_TOKEN, ...) or the keyring, never from here
rate: "10/s"                     # never faster than this; also "600/min", "5000/h"
retry: {{attempts: 3, delay: 30s}} # a 4xx reply is tried again after 30 s, then 60 s; a step
#                                  # still deferred after that, by the next run
# connections: 4                   # sessions at once, sharing the rate (default 1)
# suppression: false               # only for transactional mail: skip the suppression list
#                                  # (default: the list every campaign shares; `mailcli suppress`)
# state: .mailcli/{name}.sqlite    # where progress is kept (this is the default): one
#   record per recipient and step; or postgresql://... for several hosts
"""

SEQUENCE_WELCOME = (
    "Hello {{ first_name }},\n"
    "\n"
    "welcome to {{ company }}. This is the first of three messages of a sequence\n"
    "sent with mailcli: it goes out when you sign up ({{ signed_up_at }}),\n"
    "or at 09:00 your time ({{ tz }}) if that was outside 09:00-18:00.\n"
    "In two days: three tips; in a week, on the free plan, an offer.\n"
    "\n"
    "-- \n"  # the signature separator of RFC 3676: dash, dash, space
    "The {{ company }} team\n"
    "Unsubscribe: {{ unsubscribe_base }}?u={{ token | urlencode }}\n"
)

SEQUENCE_TIPS = """\
Hello {{ first_name }},

two days in, three things that help:

1. **Every column is a variable.** Your plan is *{{ plan }}*, your zone {{ tz }}.
2. **Preview before you send.** `mailcli preview --all` checks every step of every row.
3. **Let cron do the rest.** Each run sends what has come due, inside the sending hours.

The {{ company }} team · [Unsubscribe]({{ unsubscribe_base }}?u={{ token | urlencode }})
"""

SEQUENCE_OFFER = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>An offer from {{ company }}</title>
</head>
<body style="font-family: Helvetica, Arial, sans-serif; color: #222; max-width: 600px;">
<h1>{{ first_name }}, a week with {{ company }}</h1>
<p>You are on the free plan. For the next 14 days, Pro costs 20% less.</p>
<p><a href="https://example.com/upgrade?u={{ token | urlencode }}">Upgrade to Pro</a></p>
<p>Only recipients on the free plan get this step: it has <code>if: "plan == 'free'"</code>,
and the others skip it.</p>
<hr>
<p style="font-size: 12px; color: #777;">
The {{ company }} team &middot;
<a href="{{ unsubscribe_base }}?u={{ token | urlencode }}">Unsubscribe</a>
</p>
</body>
</html>
"""

# Sign-up times in the three forms `start:` takes (a local date-time, a date, an instant), in
# two zones, so that `batch --dry-run --at` shows steps sent, held by the window and waiting.
SEQUENCE_RECIPIENTS = """\
email,first_name,signed_up_at,tz,plan,token
ann@example.com,Ann,2026-03-02T08:15,Europe/Paris,free,t-1f3a
bob@example.org,Bob,2026-03-02T19:40,America/New_York,pro,t-7c2e
chloe@example.net,Chloé,2026-03-03,Europe/Paris,free,t-9d41
dan@example.com,Dan,2026-03-04T14:30:00Z,America/New_York,free,t-4b08
"""

GITIGNORE = """\
# mailcli's progress (keep it on the machine that sends) and sandbox output
.mailcli/
outbox/
"""


def create_campaign(folder: Path, *, sequence: bool = False) -> list[Path]:
    """Write a new campaign into `folder` (created; it must not exist or must be empty).

    Returns the files written. The campaign is named after the folder. With `sequence`, it is a
    three-step onboarding sequence (`steps:`) instead of one message.
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
    if sequence:
        files = {
            "campaign.yaml": SEQUENCE_CAMPAIGN.format(name=name, folder=folder.as_posix()),
            "templates/welcome.txt.j2": SEQUENCE_WELCOME,
            "templates/tips.md.j2": SEQUENCE_TIPS,
            "templates/offer.html.j2": SEQUENCE_OFFER,
            "recipients.csv": SEQUENCE_RECIPIENTS,
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
