"""Transactional mail from a background job: a Celery task that sends through mailcli.

A web request queues the message (`send_email.delay(...)`) and answers at once; a worker sends
it with mailcli. The retry rule is mailcli's: a message that was not taken for now (`deferred`:
a 4xx, or the server could not be reached) is tried again later; one that was handed over but
whose answer was lost (`unknown`) is never retried, because the server may have it and a retry
could deliver it twice.

    CELERY_BROKER_URL=redis://localhost:6379/0 MAILCLI_HOST=smtp.example.com \\
        celery -A tasks worker        # in examples/celery/
    >>> from tasks import send_email
    >>> send_email.delay("ann@example.com", "Your receipt", "Thank you.").get()

SMTP settings come from the MAILCLI_* variables (and the password from MAILCLI_PASSWORD, the
keyring or a profile's password_command), never from the task's arguments.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import mailcli

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
app = Celery("mail", broker=BROKER, backend=os.environ.get("CELERY_RESULT_BACKEND", BROKER))
# Acknowledge a task when a worker takes it (Celery's default), not when it ends: a worker that
# dies mid-send must not have its task run again, or a recipient could get two messages.
app.conf.task_acks_late = False
RETRY_DELAY_S = float(os.environ.get("MAIL_RETRY_DELAY", "60"))


@app.task(bind=True, max_retries=5, name="mail.send_email")  # type: ignore[misc]
def send_email(
    self: Any, to: str, subject: str, body: str, html: str | None = None
) -> dict[str, Any]:
    """Send one message; retried while it is deferred, never once it is unknown."""
    message = mailcli.Message(subject, [to], body, html)
    try:
        delivery = mailcli.Mailer.from_env().send(message)
    except mailcli.UnavailableError as exc:
        # Nothing was sent: the server could not be reached at all.
        raise self.retry(exc=exc, countdown=RETRY_DELAY_S * 2**self.request.retries) from None
    if delivery.status is mailcli.DeliveryStatus.DEFERRED:
        raise self.retry(countdown=RETRY_DELAY_S * 2**self.request.retries)
    # sent, failed (refused for good) and unknown (maybe delivered) are final.
    return {
        "status": delivery.status.value,
        "message_id": delivery.message_id,
        "code": delivery.code,
        "reply": delivery.reply,
        "tries": self.request.retries + 1,
    }
