"""Email sending throughput: the full pipeline (claim, re-check, personalisation, headers,
SMTP, state updates) against a bare aiosmtplib loop, both to the same SMTP sink running in
another process, in the same run.

    uv run python benchmarks/sending.py [--messages 5000] [--concurrency 8]

Target (issue 3): the pipeline reaches at least 70% of the bare loop. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiosmtplib
from common import ROOT, free_port, start_process, subscribed_database
from rich.console import Console
from rich.table import Table

from consentry.delivery import sending
from consentry.delivery import service as deliveries
from consentry.delivery.content import Content
from consentry.delivery.transports import transport_for
from consentry.domain.channels import Channel
from consentry.settings import SendingSettings, Settings

CONTENT = Content(subject="Neuigkeiten für {{ profile.first_name }}",
                  text="Hallo {{ profile.first_name }},\n\nunsere Neuigkeiten ...\n\n"
                       "Abmelden: {{ unsubscribe_url }}\n",
                  html="<p>Hallo {{ profile.first_name }},</p><p>unsere Neuigkeiten ...</p>"
                       "<p><a href=\"{{ unsubscribe_url }}\">Abmelden</a></p>")


async def bare_loop(port: int, n: int, concurrency: int) -> float:
    """The floor: prebuilt bytes, one connection per task, MAIL/RCPT/DATA, nothing else."""
    body = (b"From: news@example.com\r\nTo: u@isp.example\r\nSubject: Hi\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
        await smtp.connect()
        while not queue.empty():
            i = queue.get_nowait()
            await smtp.sendmail("news@example.com", [f"u{i}@isp.example"], body)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - started)


def pipeline(port: int, n: int, concurrency: int, workdir: Path) -> float:
    engine = subscribed_database(workdir / "send.db", n)
    settings = Settings(database_url=str(engine.url), smtp_url=f"smtp://127.0.0.1:{port}")
    settings = replace(settings, sending=SendingSettings(rate=0, per_domain_rate=0,
                                                         concurrency=concurrency))
    with engine.begin() as conn:
        did = deliveries.create(conn, settings, deliveries.NewDelivery(
            name="bench", channel=Channel.EMAIL, service="news", content=CONTENT), None)
        deliveries.analyze(conn, settings, did)
    started = time.perf_counter()
    stats = sending.send(engine, settings, did, transport_for("email", settings))
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert stats.sent == n, stats
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    sink = start_process([str(ROOT / "tests" / "smtp_sink.py"), "--port", str(port)], port)
    try:
        bare = asyncio.run(bare_loop(port, args.messages, args.concurrency))
        with tempfile.TemporaryDirectory() as tmp:
            full = pipeline(port, args.messages, args.concurrency, Path(tmp))
    finally:
        sink.terminate()
        sink.wait()
    table = Table(title=f"email sending, {args.messages} messages, "
                        f"{args.concurrency} connections, SMTP sink in another process")
    for col in ("what", "messages/s", "share of bare loop"):
        table.add_column(col)
    table.add_row("bare aiosmtplib loop", f"{bare:,.0f}", "100%")
    table.add_row("Consentry pipeline (SQLite)", f"{full:,.0f}", f"{full / bare:.0%}")
    Console(width=140).print(table)
    print("target: the pipeline at least 70% of the bare loop")


if __name__ == "__main__":
    main()
