"""An SMTP sink that behaves like a receiving ISP, for benchmarks/seed_claim.py.

- RCPT to an unknown user (local part starting with "gone") answers 550 5.1.1.
- It watches the sender's error rate over the last WINDOW recipients; once it passes THRESHOLD,
  every MAIL is answered 421 4.7.28 ("rate limited due to errors") for PENALTY seconds, as
  big mailbox providers do with senders that mail dead addresses.

    python benchmarks/isp_sink.py --port 2526 [--threshold 0.05] [--window 500] [--penalty 2]

It writes its counters as JSON to --stats FILE every half second and when it stops (SIGTERM),
so the benchmark in another process can read them.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class IspHandler:
    def __init__(self, threshold: float, window: int, penalty: float) -> None:
        self.threshold, self.penalty = threshold, penalty
        self.recent: deque[bool] = deque(maxlen=window)
        self.blocked_until = 0.0
        self.lock = threading.Lock()
        self.counts = {"delivered": 0, "user_unknown": 0, "throttled": 0}

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            if time.monotonic() < self.blocked_until:
                self.counts["throttled"] += 1
                return "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        bad = address.split("@")[0].startswith("gone")
        with self.lock:
            self.recent.append(bad)
            if (len(self.recent) >= self.recent.maxlen // 2
                    and sum(self.recent) / len(self.recent) > self.threshold):
                self.blocked_until = time.monotonic() + self.penalty
                self.recent.clear()
            if bad:
                self.counts["user_unknown"] += 1
                return "550 5.1.1 The email account that you tried to reach does not exist"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.counts["delivered"] += 1
        return "250 2.0.0 OK"

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--penalty", type=float, default=2.0)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    handler = IspHandler(args.threshold, args.window, args.penalty)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.is_set():
        args.stats.write_text(json.dumps(handler.snapshot()))
        stop.wait(0.5)
    args.stats.write_text(json.dumps(handler.snapshot()))
    controller.stop()


if __name__ == "__main__":
    main()
