"""Transactional mail from an application: one message, then many over one connection.

Uses only the public API (`import mailcli`). Run it against any SMTP server; for a try on this
machine start `mailcli sink` in another terminal first (it saves what it gets as .eml files):

    mailcli sink --port 8025 --dir outbox &
    python examples/library/transactional.py --port 8025 --count 200

It prints one JSON object: what became of the single message and of each bulk one.
"""

from __future__ import annotations

import argparse
import json
import sys

import mailcli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--security", default="none", choices=["starttls", "tls", "none"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--domain", default="example.com", help="the recipients' domain")
    args = parser.parse_args(argv)

    mailer = mailcli.Mailer(
        args.host,
        args.port,
        args.security,
        timeout=10,
        default_sender="Acme Shop <shop@acme.example>",
    )
    # One message: a connection is opened for it and closed after.
    receipt = mailcli.Message(
        "Your order #1001",
        recipients=[f"Ann <ann@{args.domain}>"],
        body="Thank you for your order.\n",
        html="<p>Thank you for your <b>order</b>.</p>",
    )
    receipt.attach("receipt.txt", "text/plain", "Order #1001: 1 x teapot\n")
    first = mailer.send(receipt)

    # Many messages: one connection, pipelined when the server offers it. A refused
    # recipient is data in its Delivery, never an exception.
    messages = [
        mailcli.Message(
            f"Your weekly digest, #{n}",
            recipients=[f"reader{n}@{args.domain}"],
            body=f"Hello reader {n}.\n",
            extra_headers={"X-Digest": str(n)},
        )
        for n in range(1, args.count + 1)
    ]
    with mailer.connect() as connection:
        deliveries = connection.send_many(messages)
        connections = connection.connections

    print(
        json.dumps(
            {
                "single": {"status": first.status.value, "message_id": first.message_id},
                "connections": connections,
                "bulk": [
                    {
                        "to": list(d.recipients),
                        "status": d.status.value,
                        "message_id": d.message_id,
                        "code": d.code,
                        "refused": {a: str(r) for a, r in d.refused.items()},
                    }
                    for d in deliveries
                ],
            }
        )
    )
    return 0 if first.ok and all(d.ok for d in deliveries) else 1


if __name__ == "__main__":
    sys.exit(main())
