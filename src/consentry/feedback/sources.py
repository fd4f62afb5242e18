"""Reading feedback messages from the paths `feedback classify/ingest` take: a message file, an
mbox, a maildir, or a folder of message files (the stdlib `mailbox` module reads the formats)."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RawMessage:
    source: str  # the file, "mbox#N" or "maildir/KEY": where an operator finds it again
    raw: bytes


class UnreadablePath(Exception):
    """A path that is not a message, an mbox or a maildir (or cannot be read)."""


def _is_maildir(path: Path) -> bool:
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(5) == b"From "


def read(path: Path) -> Iterator[RawMessage]:
    """The messages at `path`, in a stable order."""
    try:
        if path.is_dir():
            if _is_maildir(path):
                box = mailbox.Maildir(path, factory=None, create=False)
                for key in sorted(box.iterkeys()):
                    yield RawMessage(f"{path}/{key}", box.get_bytes(key))
                return
            for child in sorted(p for p in path.rglob("*") if p.is_file()
                                and not p.name.startswith(".")
                                and p.suffix.lower() not in (".json", ".md", ".txt.license")
                                and p.name != "LICENSE"):
                yield from read(child)
            return
        if not path.is_file():
            raise UnreadablePath(f"{path}: no such file or directory")
        if _is_mbox(path):
            box = mailbox.mbox(path, factory=None, create=False)
            try:
                messages = [box.get_bytes(key) for key in box.iterkeys()]
            finally:
                box.close()
            for number, raw in enumerate(messages, start=1):
                yield RawMessage(f"{path}#{number}", raw)
            return
        yield RawMessage(str(path), path.read_bytes())
    except OSError as exc:
        raise UnreadablePath(f"{path}: {exc.strerror or exc}") from None
