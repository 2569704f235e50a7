"""DKIM signing cost per message: mailcli's signer against dkimpy's `dkim.sign()`.

The same personalised messages of the sample campaign are built unsigned, then signed by
mailcli (dkimpy canonicalisation, OpenSSL RSA, the key parsed once), then signed by
`dkim.sign()` as most Python tools call it (the baseline, from the same run). A 2048-bit key.
Every signature of both is checked with dkimpy's verifier before the figures are printed.

    python benchmarks/dkim_sign.py [--messages 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dkim
from common import make_campaign

from mailcli.campaign import DkimConfig, load_campaign
from mailcli.dkimsign import DkimSigner, generate_key, load_signer
from mailcli.message import DKIM_HEADERS, MessageBuilder
from mailcli.pipeline import Pipeline, Ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        campaign = load_campaign(make_campaign(Path(tmp) / "c", args.messages))
        pem = generate_key(2048)
        (Path(tmp) / "dkim.pem").write_bytes(pem)
        pipeline = Pipeline(campaign)
        ready = [item for item in pipeline.items() if isinstance(item, Ready)]
        plain = pipeline.builder

        started = time.perf_counter()
        unsigned = [plain.build(r.rendered, [r.recipient.mailbox]).data for r in ready]
        build_s = time.perf_counter() - started

        config = DkimConfig(domain="acme.example", selector="s1", key=Path(tmp) / "dkim.pem")
        signing = MessageBuilder(plain.sender, signer=load_signer(config), list_id=campaign.list_id)
        started = time.perf_counter()
        ours = [signing.build(r.rendered, [r.recipient.mailbox]).data for r in ready]
        ours_s = time.perf_counter() - started

        started = time.perf_counter()
        theirs = [
            dkim.sign(
                data,
                b"s1",
                b"acme.example",
                pem,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(DKIM_HEADERS[:4]),
            )
            + data
            for data in unsigned
        ]
        theirs_s = time.perf_counter() - started

    record = DkimSigner(pem, domain="acme.example", selector="s1", where="bench").public_key_record
    answer = record.encode()
    assert all(dkim.verify(m, dnsfunc=lambda name, timeout=5: answer) for m in ours + theirs)
    n = len(ready)
    per = {
        name: s / n * 1000
        for name, s in (("build", build_s), ("ours", ours_s), ("dkimpy", theirs_s))
    }
    print(f"{n} messages of the sample campaign, 2048-bit RSA, every signature verified by dkimpy")
    print(f"  build, unsigned:              {per['build']:7.3f} ms a message")
    print(
        f"  build + mailcli DKIM signer:  {per['ours']:7.3f} ms a message "
        f"({n / ours_s:,.0f} messages/s on one core)"
    )
    print(
        f"  dkim.sign() alone (baseline): {per['dkimpy']:7.3f} ms a message "
        f"({n / theirs_s:,.0f} messages/s)"
    )
    print(
        f"  signing cost, dkimpy / mailcli: {(per['dkimpy']) / (per['ours'] - per['build']):.1f}x"
    )


if __name__ == "__main__":
    main()
