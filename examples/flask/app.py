"""A small Flask application written for Flask-Mail.

It runs unchanged on mailcli: replace the `flask_mail` import below with `mailcli.flask` (the
test suite runs its tests both ways, `tests/test_flask.py`). Try it against `mailcli sink`:

    mailcli sink --port 8025 --dir outbox &
    flask --app examples/flask/app.py run
    curl -d email=ann@example.com localhost:5000/welcome
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask_mail import BadHeaderError, Mail, Message

mail = Mail()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        MAIL_SERVER="localhost",
        MAIL_PORT=8025,
        MAIL_DEFAULT_SENDER=("Acme Shop", "shop@acme.example"),
    )
    app.config.update(config or {})
    mail.init_app(app)

    @app.post("/welcome")
    def welcome() -> Any:
        msg = Message(
            "Welcome to Acme",
            recipients=[request.form["email"]],
            body="Thanks for signing up.",
            html="<p>Thanks for <b>signing up</b>.</p>",
        )
        msg.attach("terms.txt", "text/plain", "The terms.\n")
        mail.send(msg)
        return {"sent": 1}

    @app.post("/digest")
    def digest() -> Any:
        count = int(request.form.get("count", "100"))
        with mail.connect() as conn:
            for n in range(count):
                conn.send(Message(f"Digest #{n}", [f"reader{n}@example.com"], f"Hello reader {n}."))
        return {"sent": count}

    @app.post("/contact")
    def contact() -> Any:
        try:
            mail.send_message(
                subject=request.form["subject"],
                recipients=["support@acme.example"],
                body=request.form["text"],
            )
        except BadHeaderError:
            return {"error": "the subject may not contain line breaks"}, 400
        return {"sent": 1}

    return app


app = create_app()
