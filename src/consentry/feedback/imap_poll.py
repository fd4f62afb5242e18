"""Polling a bounce mailbox over IMAP (TLS): each message is applied, then moved out of the way.

`feedback.imap_url` names the mailbox, `imaps://user:password@host[:port]/FOLDER` (user and
password percent-encoded, port 993 and folder INBOX by default). A poll logs in, reads every
undeleted message of the folder (BODY.PEEK: nothing is marked seen before it is stored),
applies them in batches of BATCH_SIZE, one transaction per batch
(feedback.service.apply_batch), and then moves what was stored (applied, ignored, duplicate
or kept for review) to `feedback.imap_processed_folder`, created when missing: UID MOVE where
the server has MOVE, else UID COPY, \\Deleted and expunge. A message whose processing failed
stays where it was and is tried again next time; one stored but not moved (a crash in between)
counts as a duplicate next time, so nothing is applied twice.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import logging
import re
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import sqlalchemy as sa

from consentry.domain.errors import ConsentryError
from consentry.feedback.service import Applied, Incoming, apply_batch, incoming_message
from consentry.settings import Settings
from consentry.tokens import Signer

log = logging.getLogger("consentry.feedback.imap")

BATCH_SIZE = 100
TIMEOUT = 60.0  # seconds for connecting and for each IMAP response
DEFAULT_PORT = 993


@dataclass(frozen=True)
class ImapMailbox:
    host: str
    port: int
    user: str
    password: str
    folder: str

    def describe(self) -> str:
        """Where, without the password (for logs and the messages' source)."""
        user = urllib.parse.quote(self.user, safe="")
        return f"imaps://{user}@{self.host}:{self.port}/{urllib.parse.quote(self.folder)}"


def parse_imap_url(url: str) -> ImapMailbox:
    """imaps://user:password@host[:port]/FOLDER, user and password percent-encoded."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() != "imaps":
        raise ConsentryError(f"feedback.imap_url: expected imaps://user:password@host[:port]"
                             f"/FOLDER, got scheme {parts.scheme or 'none'!r} (only IMAP over "
                             "TLS is supported)")
    if not parts.hostname:
        raise ConsentryError("feedback.imap_url: no host")
    if parts.username is None or parts.password is None:
        raise ConsentryError("feedback.imap_url: user and password are needed "
                             "(imaps://user:password@host/FOLDER)")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConsentryError("feedback.imap_url: the port is not a number") from None
    folder = urllib.parse.unquote(parts.path.lstrip("/")) or "INBOX"
    return ImapMailbox(parts.hostname, port, urllib.parse.unquote(parts.username),
                       urllib.parse.unquote(parts.password), folder)


@dataclass
class PollResult:
    fetched: int = 0  # messages read from the folder
    applied: int = 0  # stored and applied (including those that changed nothing, "ignored")
    duplicates: int = 0  # stored before: counted once
    review: int = 0  # stored for review: nothing could be read out of them
    failed: int = 0  # processing raised: left in the folder for the next poll
    moved: int = 0  # moved to the processed folder

    def add(self, other: PollResult) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def poll(settings: Settings, engine: sa.Engine, signer: Signer | None = None, *,
         ssl_context: ssl.SSLContext | None = None, url: str | None = None,
         batch_size: int = BATCH_SIZE, timeout: float = TIMEOUT) -> PollResult:
    """Read the mailbox once; see the module's docstring. ssl_context: whom to trust (default:
    the system's CAs, certificates and host names verified)."""
    url = url or settings.feedback.imap_url
    if not url:
        raise ConsentryError("no mailbox to poll: set feedback.imap_url (or CONSENTRY_IMAP_URL) "
                             "to imaps://user:password@host[:port]/FOLDER")
    mailbox = parse_imap_url(url)
    if signer is None:
        with engine.begin() as conn:
            signer = Signer.for_database(conn, settings)
    context = ssl_context or ssl.create_default_context()
    try:
        client = imaplib.IMAP4_SSL(mailbox.host, mailbox.port, ssl_context=context,
                                   timeout=timeout)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConsentryError(f"{mailbox.describe()}: cannot connect: {exc}") from None
    try:
        return _Session(client, mailbox, settings, engine, signer,
                        settings.feedback.imap_processed_folder).run(max(batch_size, 1))
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ConsentryError(f"{mailbox.describe()}: {exc}") from None
    finally:
        _close(client)


def _close(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (OSError, imaplib.IMAP4.error):
        with contextlib.suppress(OSError):
            client.shutdown()


class _Session:
    def __init__(self, client: imaplib.IMAP4, mailbox: ImapMailbox, settings: Settings,
                 engine: sa.Engine, signer: Signer, processed: str) -> None:
        self.client = client
        self.mailbox = mailbox
        self.settings = settings
        self.engine = engine
        self.signer = signer
        self.processed = processed
        self.capabilities: frozenset[str] = frozenset()
        self.processed_exists = False

    def run(self, batch_size: int) -> PollResult:
        client = self.client
        try:
            client.login(self.mailbox.user, self.mailbox.password)
        except imaplib.IMAP4.error as exc:
            raise ConsentryError(f"{self.mailbox.describe()}: login failed: "
                                 f"{_text(exc)}") from None
        self.capabilities = self._capabilities()
        if self.mailbox.folder == self.processed:
            raise ConsentryError(f"{self.mailbox.describe()}: the polled folder is the "
                                 "processed folder (feedback.imap_processed_folder)")
        _ok(client.select(_mailbox_name(self.mailbox.folder)),
            f"cannot open folder {self.mailbox.folder!r}")
        # UNDELETED: a message copied and flagged by an earlier poll that stopped before its
        # expunge is done with.
        data = _ok(client.uid("SEARCH", None, "UNDELETED"), "UID SEARCH")
        uids = [uid for line in data if line for uid in line.split()]
        total = PollResult()
        for start in range(0, len(uids), batch_size):
            total.add(self._batch(uids[start:start + batch_size]))
        if uids:
            log.info("%s: %s", self.mailbox.describe(), total.to_json())
        return total

    def _capabilities(self) -> frozenset[str]:
        typ, data = self.client.capability()
        words = b" ".join(d for d in data if isinstance(d, bytes)).split() if typ == "OK" else []
        return frozenset(w.decode("ascii", "replace").upper() for w in words)

    def _batch(self, uids: Sequence[bytes]) -> PollResult:
        result = PollResult()
        items: list[tuple[bytes, Incoming]] = []
        for uid in uids:
            raw = self._fetch(uid)
            if raw is None:  # gone meanwhile (another poller took it)
                continue
            result.fetched += 1
            try:
                items.append((uid, incoming_message(
                    raw, via="imap",
                    source=f"{self.mailbox.describe()};UID={uid.decode('ascii')}")))
            except Exception:
                log.exception("%s UID %s could not be read: left in place",
                              self.mailbox.describe(), uid.decode("ascii", "replace"))
                result.failed += 1
        done: list[bytes] = []
        for uid, applied in self._apply(items, result):
            done.append(uid)
            if applied.status == "duplicate":
                result.duplicates += 1
            elif applied.status == "review":
                result.review += 1
            else:
                result.applied += 1
        if done:
            self._move(done)
            result.moved += len(done)
        return result

    def _fetch(self, uid: bytes) -> bytes | None:
        data = _ok(self.client.uid("FETCH", uid, "(BODY.PEEK[])"),
                   f"UID FETCH {uid.decode('ascii', 'replace')}")
        for part in data:
            if isinstance(part, tuple) and len(part) == 2 and b"BODY[]" in part[0].upper():
                return bytes(part[1])
        return None

    def _apply(self, items: Sequence[tuple[bytes, Incoming]],
               result: PollResult) -> list[tuple[bytes, Applied]]:
        """The batch in one transaction; when that fails, each message in its own, so that
        one bad message does not hold back the rest."""
        if not items:
            return []
        try:
            with self.engine.begin() as conn:
                applied = apply_batch(conn, self.settings, self.signer, [i for _, i in items])
            return list(zip([u for u, _ in items], applied, strict=True))
        except Exception:
            if len(items) == 1:
                log.exception("%s UID %s could not be stored: left in place",
                              self.mailbox.describe(), items[0][0].decode("ascii", "replace"))
                result.failed += 1
                return []
            log.warning("%s: a batch of %d could not be stored; trying one by one",
                        self.mailbox.describe(), len(items), exc_info=True)
        return [pair for item in items for pair in self._apply([item], result)]

    def _move(self, uids: Sequence[bytes]) -> None:
        client = self.client
        target = _mailbox_name(self.processed)
        self._ensure_processed(target)
        uid_set = b",".join(uids).decode("ascii")
        if "MOVE" in self.capabilities:
            _ok(client.uid("MOVE", uid_set, target), f"UID MOVE to {self.processed!r}")
            return
        _ok(client.uid("COPY", uid_set, target), f"UID COPY to {self.processed!r}")
        _ok(client.uid("STORE", uid_set, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE \\Deleted")
        if "UIDPLUS" in self.capabilities:
            _ok(client.uid("EXPUNGE", uid_set), "UID EXPUNGE")  # only ours
        else:
            _ok(client.expunge(), "EXPUNGE")

    def _ensure_processed(self, target: str) -> None:
        if self.processed_exists:
            return
        typ, data = self.client.list('""', target)
        if typ != "OK" or not [d for d in data if d]:
            typ, data = self.client.create(target)
            if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(
                    d for d in data if isinstance(d, bytes)).upper():
                raise ConsentryError(f"{self.mailbox.describe()}: cannot create folder "
                                     f"{self.processed!r}: {_text(data)}")
            self.client.subscribe(target)
        self.processed_exists = True


def _ok(response: tuple[str, list], what: str) -> list:
    typ, data = response
    if typ != "OK":
        raise imaplib.IMAP4.error(f"{what}: {typ} {_text(data)}")
    return data


def _text(value: object) -> str:
    if isinstance(value, list):
        return " ".join(_text(v) for v in value if v is not None)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_PRINTABLE = re.compile(r"[\x20-\x25\x27-\x7e]+")


def _mailbox_name(name: str) -> str:
    """A folder name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    encoded: list[str] = []
    pos = 0
    while pos < len(name):
        match = _PRINTABLE.match(name, pos)
        if match:
            encoded.append(match.group())
            pos = match.end()
        elif name[pos] == "&":
            encoded.append("&-")
            pos += 1
        else:
            end = pos
            while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
                end += 1
            chunk = base64.b64encode(name[pos:end].encode("utf-16-be")).rstrip(b"=")
            encoded.append("&" + chunk.decode("ascii").replace("/", ",") + "-")
            pos = end
    text = "".join(encoded).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
