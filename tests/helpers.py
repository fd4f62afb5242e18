"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from consentry.cli.common import ROOT
from consentry.cli.main import app


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


def cli(db_url: str, *args: str, input: str | None = None) -> Run:
    """Run `consentry ARGS --database URL` in-process, as a user would type it."""
    ROOT.database, ROOT.json = None, False
    result = CliRunner().invoke(app, [*args, "--database", db_url], input=input,
                                catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def run_in_threads(target: Callable[[int], None], count: int) -> None:
    """Run target(0) .. target(count - 1) in threads at once; re-raise the first error."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(target, i) for i in range(count)]:
            future.result()


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (all held at once while they are picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                 for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
