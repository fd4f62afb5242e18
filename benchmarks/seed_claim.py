"""The seed's claim, measured: excluding opted-out and quarantined recipients at analysis makes
sending faster, because receivers throttle senders with high error rates.

An SMTP sink behaving like a receiving ISP (benchmarks/isp_sink.py: 550 5.1.1 for unknown
users; 421 for a while once the sender's error rate passes a threshold) receives the same
delivery twice:
- with exclusion: Consentry's analysis leaves out the quarantined addresses (dead mailboxes
  learned from earlier bounces) and the opted-out profiles;
- without: every address is sent to, as a system without quarantine and opt-out would.

    uv run python benchmarks/seed_claim.py [--recipients 100000]

Prints delivered messages per second and error rates for both. Not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from common import ROOT, free_port, start_process, subscribed_database
from rich.console import Console
from rich.table import Table

from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.delivery.transports import transport_for
from consentry.domain.channels import Channel
from consentry.settings import SendingSettings, Settings

CONTENT = Content(subject="Hallo {{ profile.first_name }}",
                  text="Hallo {{ profile.first_name }}\nAbmelden: {{ unsubscribe_url }}\n")
DEAD_SHARE = 8  # percent of addresses whose mailbox no longer exists (quarantined with us)
OPTED_OUT_SHARE = 5  # percent of profiles that opted out


def run(recipients: int, exclude: bool, workdir: Path) -> dict[str, float]:
    # Every DEAD_SHARE-th percent of profiles has a dead mailbox ("gone..." at the ISP).
    local = f"CASE WHEN x % 100 < {DEAD_SHARE} THEN 'gone' || x ELSE 'u' || x END"
    engine = subscribed_database(workdir / f"claim-{exclude}.db", recipients, local)
    now = "2026-01-01 00:00:00"
    if exclude:
        with engine.begin() as conn:
            # What earlier deliveries taught us: dead mailboxes are quarantined; some people
            # opted out. Without exclusion (a system with neither) nothing is known.
            conn.execute(sa.text(
                "INSERT INTO quarantine (channel, address_key, address, domain, status, reason,"
                " error_count, created_at, updated_at, status_at, last_error_at) "
                "SELECT 'email', email_key, email, 'isp.example', 'quarantined', 'user_unknown',"
                " 1, :now, :now, :now, :now FROM profiles WHERE email_key LIKE 'gone%'"),
                {"now": now})
            conn.execute(sa.text(
                "INSERT INTO opt_outs (profile_id, scope, at, source) SELECT id, 'all', :now, "
                f"'import' FROM profiles WHERE id % 100 >= {100 - OPTED_OUT_SHARE}"),
                {"now": now})
    port = free_port()
    stats_file = workdir / f"isp-{exclude}.json"
    sink = start_process([str(ROOT / "benchmarks" / "isp_sink.py"), "--port", str(port),
                          "--stats", str(stats_file)], port)
    settings = replace(Settings(database_url=str(engine.url),
                                smtp_url=f"smtp://127.0.0.1:{port}"),
                       sending=SendingSettings(rate=0, per_domain_rate=0, concurrency=8))
    try:
        with engine.begin() as conn:
            did = deliveries.create(conn, settings, deliveries.NewDelivery(
                name="claim", channel=Channel.EMAIL, service="news", content=CONTENT), None)
            summary = deliveries.analyze(conn, settings, did)
        started = time.perf_counter()
        stats = sending.send(engine, settings, did, transport_for("email", settings))
        elapsed = time.perf_counter() - started
    finally:
        sink.terminate()
        sink.wait()
        engine.dispose()
    isp = json.loads(stats_file.read_text())
    attempted = isp["delivered"] + isp["user_unknown"]
    return {"sent to": attempted, "excluded": sum(summary["excluded"].values()),
            "delivered": isp["delivered"], "seconds": elapsed,
            "delivered/s": isp["delivered"] / elapsed,
            "bounce rate": isp["user_unknown"] / attempted if attempted else 0.0,
            "throttled": isp["throttled"], "failed": stats.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: run(args.recipients, exclude, Path(tmp))
                   for label, exclude in (("with exclusion", True), ("without", False))}
    table = Table(title=f"the seed's claim: {args.recipients:,} recipients, {DEAD_SHARE}% dead "
                        f"mailboxes, {OPTED_OUT_SHARE}% opted out")
    for col in ("delivery", "excluded", "sent to", "delivered", "seconds", "delivered/s",
                "bounce rate",
                "421 answers", "failed"):
        table.add_column(col)
    for label, r in results.items():
        table.add_row(label, f"{r['excluded']:,}", f"{r['sent to']:,}", f"{r['delivered']:,}",
                      f"{r['seconds']:.1f}",
                      f"{r['delivered/s']:,.0f}", f"{r['bounce rate']:.1%}",
                      f"{r['throttled']:,}", f"{r['failed']:,}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
