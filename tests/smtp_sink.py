"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 and a free port, run in a thread.

It records what it receives (envelope and raw bytes), counts connections, and answers as it is
told: a reply per recipient (550 5.1.1, 452 4.2.2...), 421 throttling for the first N MAIL
commands or while `throttling` is set (closing the connection after the 421, as RFC 5321
says), STARTTLS / implicit TLS and AUTH when given a TLS context and credentials.

    with SmtpSink() as sink:
        sink.reject("nobody@example.com", "550 5.1.1 <nobody@example.com>: User unknown")
        sink.throttle_first(3)
        ... send to sink.url ...
        assert len(sink.messages) == ...

Run as a script (`python tests/smtp_sink.py --port 2525`) it is a sink for benchmarks in
another process that keeps nothing but a count.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import ssl
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

THROTTLE_REPLY = "421 4.7.0 Too many messages, slow down; closing connection"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)
    received_at: float = 0.0  # time.monotonic() when DATA was accepted


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SinkHandler:
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.count = 0
        self.mail_commands = 0
        self.rcpt_replies: dict[str, tuple[str, int | None]] = {}  # address -> (reply, times)
        self.rcpt_commands: dict[str, int] = {}
        self.throttle_left = 0
        self.throttling = False
        self.throttle_reply = THROTTLE_REPLY
        self.data_reply: str | None = None  # e.g. "451 4.3.0 try later" for every DATA

    @staticmethod
    def _close_after_reply(server: SMTP, reply: str) -> str:
        if reply.startswith("421") and server.transport is not None:
            # The reply is written before this callback runs; then the connection goes.
            asyncio.get_running_loop().call_soon(server.transport.close)
        return reply

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        with self.lock:
            self.mail_commands += 1
            throttled = self.throttling or self.throttle_left > 0
            if self.throttle_left > 0:
                self.throttle_left -= 1
        if throttled:
            return self._close_after_reply(server, self.throttle_reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        key = address.lower()
        with self.lock:
            self.rcpt_commands[key] = self.rcpt_commands.get(key, 0) + 1
            reply, times = self.rcpt_replies.get(key, (None, None))
            if reply is not None and times is not None:
                if times <= 0:
                    reply = None
                else:
                    self.rcpt_replies[key] = (reply, times - 1)
        if reply is not None:
            return self._close_after_reply(server, reply)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self._close_after_reply(server, self.data_reply)
        with self.lock:
            self.count += 1
            number = self.count
            if self.keep:
                self.messages.append(Received(
                    str(envelope.mail_from), list(envelope.rcpt_tos),
                    bytes(envelope.original_content or b""), list(envelope.mail_options),
                    time.monotonic()))
        return f"250 2.0.0 Ok: queued as {number}"


class _CountingController(Controller):
    def __init__(self, handler: SinkHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.connections = 0
        self.servers: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        self.connections += 1  # aiosmtpd makes one SMTP protocol object per connection
        server: SMTP = super().factory()  # type: ignore[no-untyped-call]
        self.servers.add(server)
        return server


class SmtpSink:
    def __init__(self, *, keep: bool = True, tls_context: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None,
                 credentials: tuple[str, str] | None = None,
                 smtputf8: bool = True) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.handler = SinkHandler(keep)
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        if implicit_tls is not None:
            kwargs["ssl_context"] = implicit_tls
        if credentials is not None:
            kwargs.update(authenticator=self._authenticator, auth_required=True,
                          auth_require_tls=tls_context is not None or implicit_tls is not None)
        self.credentials = credentials
        self.auth_failures = 0
        self.controller = _CountingController(self.handler, hostname=self.host, port=self.port,
                                              **kwargs)

    def _authenticator(self, server: SMTP, session: Session, envelope: Envelope,
                       mechanism: str, auth_data: Any) -> AuthResult:
        assert self.credentials is not None
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == self.credentials[0]
              and auth_data.password.decode() == self.credentials[1])
        if not ok:
            self.auth_failures += 1
        return AuthResult(success=ok, handled=False)  # aiosmtpd sends the 235/535

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        self.controller.start()
        # Controller.start() opened one connection of its own to check the server is up.
        self.controller.connections = 0
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what it got -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    @property
    def count(self) -> int:
        return self.handler.count

    @property
    def connections(self) -> int:
        return self.controller.connections

    @property
    def mail_commands(self) -> int:
        return self.handler.mail_commands

    # --- how it answers ----------------------------------------------------------------------

    def reject(self, address: str, reply: str, times: int | None = None) -> None:
        """Answer RCPT TO:<address> with `reply` (e.g. "550 5.1.1 ... User unknown"), the
        first `times` times or always."""
        with self.handler.lock:
            self.handler.rcpt_replies[address.lower()] = (reply, times)

    def rcpt_commands(self, address: str) -> int:
        """How many RCPT TO commands named `address`."""
        with self.handler.lock:
            return self.handler.rcpt_commands.get(address.lower(), 0)

    def drop_connections(self) -> None:
        """Close every open connection from the server side (as an idle timeout would)."""
        loop = self.controller.loop

        done = threading.Event()

        def close_all() -> None:
            for server in list(self.controller.servers):
                if server.transport is not None:
                    server.transport.close()
            done.set()

        loop.call_soon_threadsafe(close_all)
        done.wait(5)

    def throttle_first(self, n: int, reply: str = THROTTLE_REPLY) -> None:
        """Answer the next `n` MAIL commands with `reply` (a 421 closes the connection)."""
        with self.handler.lock:
            self.handler.throttle_left = n
            self.handler.throttle_reply = reply

    @property
    def throttling(self) -> bool:
        return self.handler.throttling

    @throttling.setter
    def throttling(self, value: bool) -> None:
        self.handler.throttling = value

    def answer_data(self, reply: str | None) -> None:
        """Answer every DATA with `reply` (None: accept)."""
        self.handler.data_reply = reply


def main() -> None:
    parser = argparse.ArgumentParser(description="An SMTP sink that accepts and counts mail.")
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()
    handler = SinkHandler(keep=False)
    controller = Controller(handler, hostname="127.0.0.1", port=args.port)
    controller.start()
    # SIGTERM (and SIGINT, which a shell's background job ignores) end it with a count.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()
        print(f"received {handler.count} messages", flush=True)


if __name__ == "__main__":
    main()
