"""`quarantine import`: bring an existing suppression list in (ours, or an Adobe Campaign
quarantine export), row by row through the state machine, written set-based in chunks.

Reading. The file is UTF-8 with or without a BOM, comma-, semicolon- or tab-separated (the header
line decides). Bytes that are not UTF-8 are kept as surrogates while reading, so only the rows
that hold them are rejected, not the file. A record normally is one physical line; a quoted field
may span lines (a note with a line break), but a record that spans lines *and* does not parse
(an unbalanced quote) is split back into its physical lines, so one stray quote spoils one line
and not every line up to the next quote. Every rejected row goes to the rejects file with its
physical line number (the header is line 1), why, and its fields; the rejects file has the input's
delimiter and BOM and its `line_number` and `error` columns (`error`, not `reason` as in
`profiles import`: reason is a column here) are ignored on import, so it can be corrected and
imported as it is.

Columns (header names are matched case-insensitively, ignoring spaces, `_`, `-` and `.`):
address (required), channel (empty: guessed from the address), status (empty or absent:
denylisted, a plain suppression list), reason, note; from an Adobe export also failureReason,
type, errorCount, lastErrorDate, firstErrorDate and lastErrorText. Other columns are ignored.

Writing. Each row becomes a SetStatus event applied by `domain.quarantine.transition`; status
`valid` releases the address. Error history from the file (errorCount, error dates) is merged
into the entry afterwards, so that an imported mailbox-full quarantine or erroneous address is
released by time like one of ours; the status itself only ever comes from the state machine.
Each chunk of rows is one transaction: one locked read of the chunk's existing entries, the
transitions in memory in file order (an address twice in a file ends as the sequential
application would leave it, and the ledger has each step), then one batched INSERT of the new
entries, one batched UPDATE of the changed ones and one ledger append. Per-row `service.apply`
would cost two round trips and a ledger append per row.
"""

from __future__ import annotations

import csv
import functools
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from consentry.domain import quarantine as rules
from consentry.domain.addresses import Address, email_domain, guess_channel, normalize
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError, InvalidAddress
from consentry.domain.ledger import Event, Kind, Origin
from consentry.ledger import service as ledger
from consentry.quarantine import sql
from consentry.quarantine.service import entry_from_row
from consentry.settings import Settings
from consentry.store.schema import quarantine as q
from consentry.store.types import utcnow

# Rows per transaction. 5,000 keeps a chunk's IN list, its INSERT batches and its ledger append
# well inside both databases' parameter limits while amortizing the per-transaction cost.
CHUNK_ROWS = 5000

# A chunk whose insert collides with a concurrent writer (a bounce for a new address arriving
# between our read and our insert) is retried: the retry's read sees the other writer's row.
_ATTEMPTS = 3
_RETRY_SQLSTATES = frozenset({"23505", "40001", "40P01"})  # unique, serialization, deadlock

# --- SQL -----------------------------------------------------------------------------------------

# The stored entries of one channel's keys in a chunk, locked until the chunk commits so no bounce
# is applied to them between our read and our write. Ordered by id so that two importers lock in
# the same order and cannot deadlock each other. (SQLite: BEGIN IMMEDIATE already serializes.)
# Only the columns the state machine and the write need: on SQLite every timestamp read is a
# string parsed in Python, the largest cost of re-importing a list that is already in.
_EXISTING_BASE = (
    sa.select(q.c.id, q.c.address_key, q.c.status, q.c.reason, q.c.error_count,
              q.c.first_error_at, q.c.last_error_at, q.c.last_counted_at, q.c.status_at,
              q.c.note)
    .where(q.c.channel == sa.bindparam("channel"))
    .order_by(q.c.id)
    .with_for_update()
)
# PostgreSQL: the chunk's keys as one array parameter. An IN list of 5,000 placeholders makes a
# statement psycopg re-parses in Python on every execution (it caches only short statements): ten
# times the cost of the query itself.
_EXISTING_PG = _EXISTING_BASE.where(
    q.c.address_key == sa.any_(sa.bindparam("keys", type_=pg.ARRAY(sa.String()))))
# SQLite has no arrays; its IN list is parsed in C, and cheaply.
_EXISTING_SQLITE = _EXISTING_BASE.where(
    q.c.address_key.in_(sa.bindparam("keys", expanding=True)))

_TIMESTAMPS = ("first_error_at", "last_error_at", "last_counted_at", "status_at", "created_at",
               "updated_at")


def _text_timestamps(stmt: sa.Insert | sa.Update, names: Iterable[str]) -> Any:
    return stmt.values({n: sa.bindparam(f"{n}_text", type_=sa.String()) for n in names})


# SQLite: timestamps bound as the text SQLite stores, converted once per distinct value by the
# column type's own processor (_Timestamps). Through the UTCDateTime type, SQLAlchemy converts
# each of a row's six timestamps on its own, which costs as much as the insert itself; a chunk
# has a handful of distinct values (its `now`, the file's error dates).
_INSERT_SQLITE = _text_timestamps(sql.INSERT, _TIMESTAMPS)
_UPDATE_SQLITE = _text_timestamps(sql.UPDATE, (n for n in _TIMESTAMPS if n != "created_at"))


class _Timestamps:
    """Timestamp parameters in the form the chunk's statements take on this database."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        impl = q.c.updated_at.type.dialect_impl(dialect)
        self._process = impl.bind_processor(dialect) or (lambda value: value)
        self._done: dict[datetime, Any] = {}

    def params(self, values: dict[str, datetime | None]) -> dict[str, Any]:
        if not self.sqlite:
            return values
        out: dict[str, Any] = {}
        for name, value in values.items():
            text = None if value is None else self._done.get(value)
            if value is not None and text is None:
                text = self._done[value] = self._process(value)
            out[f"{name}_text"] = text
        return out

    def statements(self) -> tuple[Any, Any, Any]:
        """(existing entries, insert, update) for this database."""
        if self.sqlite:
            return _EXISTING_SQLITE, _INSERT_SQLITE, _UPDATE_SQLITE
        return _EXISTING_PG, sql.INSERT, sql.UPDATE


# --- What the columns and values of a file mean --------------------------------------------------

# Field -> header names (normalized by _name), best first: the first one present is used.
_ALIASES: dict[str, tuple[str, ...]] = {
    "address": ("address", "emailaddress", "email", "mobilephone", "phonenumber", "phone",
                "mobile", "pushtoken", "token"),
    "channel": ("channel", "type", "messagetype"),  # Adobe's nms:address calls it `type`
    "status": ("status", "quarantinestatus", "state"),
    "reason": ("reason", "failurereason", "quarantinereason", "errorreason"),
    "note": ("note", "comment", "comments", "lasterrortext", "errortext"),
    "error_count": ("errorcount", "errors"),
    "last_error_at": ("lasterrordate", "lasterror", "lasterrorat"),
    "first_error_at": ("firsterrordate", "firsterror", "firsterrorat"),
}

# Our channel names, and Adobe's (its messageType enumeration: 0 email, 1 mobile/SMS).
_CHANNELS: dict[str, Channel] = {
    "email": Channel.EMAIL, "mail": Channel.EMAIL, "0": Channel.EMAIL,
    "sms": Channel.SMS, "mobile": Channel.SMS, "mobilephone": Channel.SMS, "1": Channel.SMS,
    "push": Channel.PUSH, "pushnotification": Channel.PUSH, "mobileapp": Channel.PUSH,
    "app": Channel.PUSH,
}

# Our statuses, and Adobe's labels for them, old ("Blacklisted") and new ("On denylist").
_STATUSES: dict[str, rules.Status] = {
    "valid": rules.Status.VALID,
    "erroneous": rules.Status.ERRONEOUS,
    "quarantine": rules.Status.QUARANTINED, "quarantined": rules.Status.QUARANTINED,
    "inquarantine": rules.Status.QUARANTINED,
    **dict.fromkeys(("denylist", "denylisted", "ondenylist", "blacklist", "blacklisted",
                     "onblacklist", "blocklist", "blocklisted", "onblocklist"),
                    rules.Status.DENYLISTED),
    **dict.fromkeys(("allowlist", "allowlisted", "onallowlist", "whitelist", "whitelisted",
                     "onwhitelist"), rules.Status.ALLOWLISTED),
}

# Our reasons under their own names, and Adobe's failureReason labels and numeric values
# (enumeration nms:delivery:failureReason). "Not connected" (a phone switched off) is what we
# call unreachable.
_REASONS: dict[str, str] = {
    **{re.sub(r"[^0-9a-z]", "", r): r for r in rules.REASONS},
    "unknownuser": "user_unknown", "nosuchuser": "user_unknown", "1": "user_unknown",
    "2": "invalid_domain",
    "3": "unreachable", "notconnected": "unreachable", "6": "unreachable",
    "disabled": "account_disabled", "inactiveaccount": "account_disabled", "4": "account_disabled",
    "5": "mailbox_full",
    "20": "refused",
    "undefined": "not_defined", "0": "not_defined",
    "spamcomplaint": "complaint", "abuse": "complaint",
}

_DEFAULT_STATUS = rules.Status.DENYLISTED  # a file without statuses is a plain suppression list
_DEFAULT_REASON = "import"
_DEFAULT_SOFT_REASON = "not_defined"  # an erroneous address without a reason

# Dates: ISO 8601 first; then Adobe's US console format (month first) and the German one. A
# date without a zone is UTC.
_DATE_FORMATS = ("%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %I:%M %p", "%m/%d/%Y %H:%M:%S",
                 "%m/%d/%Y %H:%M", "%m/%d/%Y", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%d.%m.%Y")


def _name(text: str) -> str:
    return re.sub(r"[\s_.\-]", "", text.strip().strip('"').lower())


def _value(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


@dataclass(frozen=True)
class QuarantineImportResult:
    imported: int
    rejected: int


class _Rejected(Exception):
    """A row that cannot be imported; the message says why."""


@dataclass(frozen=True, slots=True)
class _History:
    """Error history an export carries for an address (Adobe's errorCount, lastErrorDate)."""

    error_count: int | None
    first_error_at: datetime | None
    last_error_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    address: Address
    event: rules.SetStatus
    note: str | None
    history: _History | None


@dataclass(frozen=True, slots=True)
class _Columns:
    width: int
    index: dict[str, int]  # field -> position, for the fields the header has

    @classmethod
    def from_header(cls, header: list[str]) -> _Columns:
        names = [_name(h) for h in header]
        index = {}
        for field_name, aliases in _ALIASES.items():
            for alias in aliases:
                if alias in names:
                    index[field_name] = names.index(alias)
                    break
        return cls(len(header), index)

    @property
    def has_history(self) -> bool:
        return not self.index.keys().isdisjoint(("error_count", "last_error_at",
                                                 "first_error_at"))

    def cells(self, fields: list[str]) -> Callable[[str], str]:
        """The stripped text of a row's field by name ("" when the file has no such column)."""
        index = self.index

        def cell(name: str) -> str:
            i = index.get(name)
            return fields[i].strip() if i is not None else ""

        return cell


# --- Reading -------------------------------------------------------------------------------------


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(rest: TextIO, dialect: type[csv.Dialect] | csv.Dialect, width: int,
             ) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(physical line, fields, why unreadable) for each record after the header."""
    consumed: list[str] = []

    def lines() -> Iterator[str]:
        for line in rest:
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), dialect)
    line_no = 2
    while True:
        consumed.clear()
        fields: list[str] | None
        why: str | None = None
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            fields, why = None, f"not readable as CSV ({exc})"
        if len(consumed) > 1 and (fields is None or len(fields) != width):
            # Most likely an unbalanced quote swallowed the lines after it: judge each on its own.
            for offset, line in enumerate(list(consumed)):
                try:
                    fields = next(csv.reader([line.rstrip("\r\n")], dialect), [])
                    yield line_no + offset, fields, None
                except csv.Error as exc:
                    yield line_no + offset, None, f"not readable as CSV ({exc})"
        else:
            yield line_no, fields, why
        line_no += len(consumed)


def _bad_utf8(fields: list[str], header: list[str]) -> str | None:
    """Why the row is rejected if a field holds bytes that were not UTF-8 (read as surrogates)."""
    for i, text in enumerate(fields):
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(text[exc.start]) - 0xDC00
            column = header[i] if i < len(header) else f"column {i + 1}"
            return f"not valid UTF-8: byte 0x{byte:02X} in {_printable(column)}"
    return None


def _printable(text: str) -> str:
    """Text for the rejects file: bytes that were not UTF-8 become U+FFFD."""
    return text if text.isascii() else re.sub("[\udc80-\udcff]", "\ufffd", text)


def _count_lines(path: Path) -> int:
    """Physical lines, for progress: a quick binary pass (about 10 ms for 100k rows)."""
    newlines, returns, last = 0, 0, b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            newlines += block.count(b"\n")
            returns += block.count(b"\r")
            last = block[-1:]
    ends = newlines or returns  # old Mac files end their lines with CR alone
    return ends + (last not in (b"\n", b"\r"))


# --- One row -------------------------------------------------------------------------------------

# Lookups of a cell's value, cached: a 100k-row export holds a handful of distinct channel,
# status and reason spellings, and often many rows with the same error date.


@functools.cache
def _channel_of(text: str) -> Channel | None:
    return _CHANNELS.get(_value(text))


@functools.cache
def _status_of(text: str) -> rules.Status | None:
    return _STATUSES.get(_value(text))


@functools.cache
def _reason_of(text: str) -> str | None:
    return _REASONS.get(_value(text))


@functools.lru_cache(maxsize=4096)
def _parse_date(text: str) -> datetime | None:
    value: datetime | None = None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                value = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _parse(fields: list[str], cols: _Columns, settings: Settings, line: int,
           now: datetime) -> _Row:
    if len(fields) != cols.width:
        raise _Rejected(f"expected {cols.width} columns, found {len(fields)}")
    cell = cols.cells(fields)
    raw = cell("address")
    if not raw:
        raise _Rejected("address is empty")
    channel_text = cell("channel")
    if channel_text:
        channel = _channel_of(channel_text)
        if channel is None:
            raise _Rejected(f"unknown channel {channel_text!r}: expected email, sms or push "
                            "(or Adobe's 0 = email, 1 = mobile)")
    else:
        channel = guess_channel(raw)
    try:
        address = normalize(channel, raw, settings.default_region)
    except InvalidAddress as exc:
        raise _Rejected(str(exc)) from None

    status_text = cell("status")
    status = _status_of(status_text) if status_text else _DEFAULT_STATUS
    if status is None:
        raise _Rejected(f"unknown status {status_text!r}: expected valid, quarantined, "
                        "denylisted, allowlisted or erroneous (or Adobe's labels)")
    reason_text = cell("reason")
    reason = _reason_of(reason_text) if reason_text else None
    if reason_text and reason is None:
        raise _Rejected(f"unknown reason {reason_text!r}: expected one of "
                        f"{', '.join(sorted(rules.REASONS))} (or Adobe's failure reasons)")
    history = _history(cell, now) if cols.has_history else None
    if status is rules.Status.VALID:
        reason, history = "", None  # a release: the counter starts again
    elif status is rules.Status.ERRONEOUS:
        if history is None or history.last_error_at is None:
            raise _Rejected("status erroneous needs the last error's date (lastErrorDate): "
                            "its soft errors are forgotten a set time after the last one")
        reason = reason or _DEFAULT_SOFT_REASON
    if status is not rules.Status.VALID:
        reason = reason or _DEFAULT_REASON
    return _Row(line, address, rules.SetStatus(status, reason or ""), cell("note") or None,
                history)


def _history(cell: Callable[[str], str], now: datetime) -> _History | None:
    count_text = cell("error_count")
    count = None
    if count_text:
        if not count_text.isdigit():
            raise _Rejected(f"errorCount {count_text!r} is not a whole number")
        count = int(count_text)
    last = _date(cell("last_error_at"), "lastErrorDate", now)
    first = _date(cell("first_error_at"), "firstErrorDate", now)
    if count is None and last is None and first is None:
        return None
    if first is not None and last is not None and first > last:
        first, last = last, first
    return _History(count, first or last, last or first)


def _date(text: str, column: str, now: datetime) -> datetime | None:
    if not text:
        return None
    value = _parse_date(text)
    if value is None:
        raise _Rejected(f"{column} {text!r} is not a date (expected ISO 8601, e.g. "
                        "2020-12-15T10:30:00Z)")
    if value > now:
        raise _Rejected(f"{column} {text!r} is in the future")
    return value


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return max(a, b) if a is not None and b is not None else a or b


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(a, b) if a is not None and b is not None else a or b


def _with_history(entry: rules.Entry, history: _History) -> rules.Entry:
    """Merge an export's error history into the entry the state machine produced: the earliest
    first error, the latest last error, the larger count. An erroneous address counts from its
    last error, so the interval and the reset run from it as for one of our own."""
    count = max(entry.error_count, history.error_count or 0)
    counted = entry.last_counted_at
    if entry.status is rules.Status.ERRONEOUS:
        count = max(count, 1)
        counted = _latest(counted, history.last_error_at)
    status_at = entry.status_at
    if entry.status in (rules.Status.QUARANTINED, rules.Status.ERRONEOUS):
        # The export's last error is when the address got its status there; time-based
        # releases (domain.quarantine.release_due) run from it, not from the import.
        status_at = _earliest(status_at, history.last_error_at)
    return rules.Entry(
        status=entry.status, reason=entry.reason, error_count=count,
        first_error_at=_earliest(entry.first_error_at, history.first_error_at),
        last_error_at=_latest(entry.last_error_at, history.last_error_at),
        last_counted_at=counted, status_at=status_at)


# --- Writing -------------------------------------------------------------------------------------


def _values(entry: rules.Entry) -> tuple[dict[str, Any], dict[str, datetime | None]]:
    """An entry's columns: (everything but the timestamps, the timestamps)."""
    return ({"status": entry.status.value, "reason": entry.reason,
             "error_count": entry.error_count},
            {"first_error_at": entry.first_error_at, "last_error_at": entry.last_error_at,
             "last_counted_at": entry.last_counted_at, "status_at": entry.status_at})


def _apply_chunk(conn: sa.Connection, rows: list[_Row], origin: Origin, settings: Settings,
                 source_name: str, now: datetime) -> None:
    times = _Timestamps(conn.dialect)
    existing, insert, update = times.statements()
    keys: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        keys[row.address.channel.value].add(row.address.key)
    stored: dict[tuple[str, str], Any] = {}
    for channel, channel_keys in keys.items():
        for found in conn.execute(existing, {"channel": channel,
                                             "keys": sorted(channel_keys)}).mappings():
            stored[(channel, found["address_key"])] = found

    was = {k: entry_from_row(found) for k, found in stored.items()}
    current = dict(was)
    addresses: dict[tuple[str, str], Address] = {}
    notes: dict[tuple[str, str], str] = {}
    events: list[Event] = []
    for row in rows:
        k = (row.address.channel.value, row.address.key)
        before = current.get(k, rules.VALID)
        after = rules.transition(before, row.event, now, settings.quarantine)
        if row.history is not None and after.status is not rules.Status.VALID:
            after = _with_history(after, row.history)
        current[k] = after
        addresses.setdefault(k, row.address)
        note = row.note or origin.note
        if note is not None:
            notes[k] = note
        if rules.state_changed(before, after):
            # Origin.event(), spelled out: replace() on the origin per row costs more than
            # the rest of the row's bookkeeping.
            events.append(Event(
                at=now, kind=Kind.QUARANTINE, source=origin.source, actor=origin.actor,
                channel=k[0], old_state=rules.describe(before),
                new_state=rules.describe(after), wording=origin.wording, address=k[1],
                ip=origin.ip, user_agent=origin.user_agent, note=note,
                evidence={**(origin.evidence or {}), "file": source_name, "line": row.line}))

    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for k, entry in current.items():
        found = stored.get(k)
        columns, stamps = _values(entry)
        if found is None:
            if entry == rules.VALID:
                continue  # unknown and still valid: nothing to keep
            address = addresses[k]
            inserts.append({
                **columns, **times.params({**stamps, "created_at": now, "updated_at": now}),
                "channel": k[0], "address_key": k[1], "address": address.value,
                "domain": email_domain(k[1]) if address.channel is Channel.EMAIL else None,
                "source": origin.source, "note": notes.get(k)})
        elif entry != was[k] or k in notes:
            updates.append({**columns, **times.params({**stamps, "updated_at": now}),
                            "source": origin.source, "note": notes.get(k, found["note"]),
                            "entry_id": found["id"]})
    if inserts:
        conn.execute(insert, inserts)
    if updates:
        conn.execute(update, updates)
    ledger.append(conn, events)


def _write_chunk(engine: sa.Engine, rows: list[_Row], origin: Origin, settings: Settings,
                 source_name: str) -> None:
    for attempt in range(_ATTEMPTS):
        try:
            with engine.begin() as conn:
                _apply_chunk(conn, rows, origin, settings, source_name, utcnow())
            return
        except sa.exc.DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if state not in _RETRY_SQLSTATES or attempt == _ATTEMPTS - 1:
                raise


# --- The import ----------------------------------------------------------------------------------


def import_quarantine(engine: sa.Engine, settings: Settings, path: Path, *,
                      rejects_path: Path | None, origin: Origin,
                      progress: Callable[[int, int], None] | None = None,
                      ) -> QuarantineImportResult:
    """Import a quarantine / suppression list CSV; see the module docstring for the format.

    Rows are committed a chunk at a time, so an interrupted import keeps the chunks it wrote;
    running it again is harmless (a row that sets the status an address already has changes
    nothing and records nothing). `progress(lines_done, lines_total)` counts the physical data
    lines of the file (the header excluded) after each chunk.
    """
    if rejects_path is not None and rejects_path.resolve() == path.resolve():
        raise ConsentryError(f"{rejects_path}: the rejects file cannot be the imported file")
    try:
        with path.open("rb") as f:
            bom = f.read(3) == b"\xef\xbb\xbf"
        total = max(_count_lines(path) - 1, 0)
        source = path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ConsentryError(f"{path}: cannot read it ({exc.strerror})") from None
    with source:
        header_line = source.readline()
        if not header_line.strip():
            raise ConsentryError(f"{path}: line 1: expected a header line "
                                 "(address, channel, status, reason, note)")
        dialect = csv.excel()
        dialect.delimiter = _delimiter(header_line)
        header = next(csv.reader([header_line], dialect))
        cols = _Columns.from_header(header)
        if "address" not in cols.index:
            raise ConsentryError(f"{path}: line 1: no address column (found "
                                 f"{', '.join(_printable(h) for h in header)})")
        with _Rejects(rejects_path, dialect, bom, header) as rejects:
            imported = _run(engine, settings, path.name, origin, cols, header,
                            _records(source, dialect, cols.width), rejects, progress, total)
    return QuarantineImportResult(imported=imported, rejected=rejects.count)


def _run(engine: sa.Engine, settings: Settings, source_name: str, origin: Origin,
         cols: _Columns, header: list[str],
         records: Iterable[tuple[int, list[str] | None, str | None]], rejects: _Rejects,
         progress: Callable[[int, int], None] | None, total: int) -> int:
    imported = 0
    now = utcnow()
    chunk: list[_Row] = []
    last_line = 1
    for batch in _batched(records, CHUNK_ROWS):
        for line, fields, why in batch:
            last_line = line
            if fields is not None:
                joined = "".join(fields)
                if not joined.strip():
                    continue  # a blank line (or only delimiters) is not a row
                if not joined.isascii():
                    why = why or _bad_utf8(fields, header)
            if why is None and fields is not None:
                try:
                    chunk.append(_parse(fields, cols, settings, line, now))
                    continue
                except _Rejected as exc:
                    why = str(exc)
            rejects.add(line, why or "unreadable", fields or [])
        if chunk:
            _write_chunk(engine, chunk, origin, settings, source_name)
            imported += len(chunk)
            chunk = []
        if progress is not None:
            progress(min(last_line - 1, total), total)
    if progress is not None:
        progress(total, total)
    return imported


def _batched(items: Iterable[Any], size: int) -> Iterator[tuple[Any, ...]]:
    iterator = iter(items)
    while batch := tuple(itertools.islice(iterator, size)):
        yield batch


class _Rejects:
    """The rejects file: `line_number`, `error`, then the row's fields under the input's
    header."""

    def __init__(self, path: Path | None, dialect: csv.Dialect, bom: bool,
                 header: list[str]) -> None:
        self.count = 0
        self._path, self._dialect, self._bom, self._header = path, dialect, bom, header
        self._file: TextIO | None = None
        self._writer: Any = None

    def __enter__(self) -> _Rejects:
        if self._path is not None:
            try:
                self._file = self._path.open("w", encoding="utf-8-sig" if self._bom else "utf-8",
                                             newline="")
            except OSError as exc:
                raise ConsentryError(f"{self._path}: cannot write the rejects file "
                                     f"({exc.strerror})") from None
            self._writer = csv.writer(self._file, self._dialect, lineterminator="\n")
            self._writer.writerow(["line_number", "error", *map(_printable, self._header)])
        return self

    def add(self, line: int, why: str, fields: list[str]) -> None:
        self.count += 1
        if self._writer is not None:
            self._writer.writerow([line, _printable(why), *map(_printable, fields)])

    def __exit__(self, *_exc: object) -> None:
        if self._file is not None:
            self._file.close()
