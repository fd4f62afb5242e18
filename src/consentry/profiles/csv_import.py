"""`profiles import`: upsert profiles from a CSV file, set-based, in chunks.

Reading. UTF-8 with or without a BOM; the header line decides between comma and semicolon;
fields may be quoted and span lines. A line that is not UTF-8 rejects its row only. Quoting is
read strictly: text after a closing quote, or a quote never closed, is not glued into a field
but rejects the row that starts on that line, and a record that spans lines *and* has the wrong
number of fields is taken for an unbalanced quote as well; either way the lines after the
rejected one are read again, so one stray quote spoils one row and not every row up to the next
quote. Blank lines (and rows of empty cells) are skipped.

Columns, matched case-insensitively and ignoring spaces, `_`, `-` and `.`: external_id (also
Adobe's `PKey`/`externalId`), email, phone (`mobilePhone`), first_name, last_name, locale,
opted_out (`blackList`), email_opted_out (`blackListEmail`), sms_opted_out (`blackListMobile`),
push_opted_out (`blackListPushnotification`), push_token with optional push_app_id and
push_platform; and what `profiles export` writes besides: subscriptions (`slug:state|...`),
push_tokens (a JSON list) and the read-only id and created_at, which are not imported. Every
other column is a custom attribute. A corrected rejects file imports as it is: its leading
line_number and reason columns are ignored. Yes/no cells take 1/0, true/false, yes/no, ja/nein,
y/n (j/n); an empty cell leaves the stored value as it is, for every column.

Matching. A row with an external id is that profile (created if new); a row without one is the
profile holding its email key (domain.md section 7), created if nobody holds it, rejected if
several profiles hold it; a row with neither (a phone or a token only) is a new profile. A key
that comes twice in the file (the same external id, the same email without an external id, or
one existing profile reached by two rows) rejects the later row: which one should win is the
user's call, not the importer's. So does a row without an external id whose email an earlier row
took away from its profile (whether it would still find that profile would depend on where the
file was cut into chunks).

Consent. Opt-out cells opt out (1) or back in (0) globally or per channel; --service subscribes
every good row's profile; the subscriptions column sets states. Every actual change is a ledger
event with the import's origin and the file and line as evidence. Addresses the import gives a
profile that were erased while suppressed are suppressed again (privacy/suppression.py).

Writing. Chunks of about CHUNK_BYTES of the file, each its own transaction, so a live system
keeps answering during a long import (the ledger's partition heads are locked only for one
chunk). Within a chunk everything is set-based (import_sql.py). A failure leaves the chunks
before it in place; running the import again matches what landed, by external id or email,
instead of duplicating it (rows with neither are created again).

Speed. Parsing and checking addresses is most of the work, so for large files the main process
only cuts the file into blocks of whole lines and writes; a pool of worker processes decodes,
parses and validates the blocks meanwhile (phone numbers through phone_value, a fast path that
gives normalize_phone's answer). A block is cut where the count of quotes says no quoted field
is open; should a malformed quote fool that, the worker hands the open record back and the main
process reads it again with the next block, so the result is always that of reading the file
from start to end.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import phonenumbers
import sqlalchemy as sa

from consentry.domain.addresses import (
    Address,
    normalize_email,
    normalize_phone,
    normalize_push_token,
)
from consentry.domain.channels import Channel
from consentry.domain.consent import SubscriptionState
from consentry.domain.errors import ConsentryError, InvalidAddress, NotFound
from consentry.domain.ledger import Event, Kind, Origin
from consentry.ledger import service as ledger
from consentry.privacy import suppression
from consentry.profiles import import_sql as sql
from consentry.profiles.service import normalize_locale
from consentry.settings import Settings
from consentry.store.types import UTCDateTime, utcnow
from consentry.workers import in_order

# Bytes of the file per chunk (and transaction): about 20,000 rows of a typical CRM export. Large
# enough that per-statement and per-transaction costs vanish, small enough that a chunk's
# staging tables and ledger append stay quick and a live system waits little for its locks.
CHUNK_BYTES = 2 << 20
# Below this size a file is read in-process: starting worker processes costs ~0.5 s.
POOL_MIN_BYTES = 4 << 20

# The shape of the cells that `profiles export` writes and this module reads back.
SUBSCRIPTION_SEPARATOR = "|"
SUBSCRIPTION_STATE_SEPARATOR = ":"

_BOOLEANS = {"1": 1, "true": 1, "yes": 1, "ja": 1, "y": 1, "j": 1,
             "0": 0, "false": 0, "no": 0, "nein": 0, "n": 0}
_STATES = frozenset(s.value for s in SubscriptionState)

# Our fields by header name (normalized by _name).
_FIELDS: dict[str, str] = {
    "externalid": "external_id", "pkey": "external_id",
    "email": "email", "emailaddress": "email",
    "phone": "phone", "mobilephone": "phone", "mobile": "phone",
    "firstname": "first_name",
    "lastname": "last_name",
    "locale": "locale",
    "optedout": "opted_out", "blacklist": "opted_out", "denylist": "opted_out",
    "emailoptedout": "email_opted_out", "blacklistemail": "email_opted_out",
    "denylistemail": "email_opted_out",
    "smsoptedout": "sms_opted_out", "blacklistmobile": "sms_opted_out",
    "denylistmobile": "sms_opted_out",
    "pushoptedout": "push_opted_out", "blacklistpushnotification": "push_opted_out",
    "denylistpushnotification": "push_opted_out",
    "pushtoken": "push_token", "pushappid": "push_app_id", "pushplatform": "push_platform",
    "pushtokens": "push_tokens",
    "subscriptions": "subscriptions",
}
# What the export writes about a profile that describes the source database, not the person.
_READ_ONLY = frozenset({"id", "createdat"})
# A rejects file's own columns, ignored when a corrected rejects file is imported.
REJECT_COLUMNS = ("line_number", "reason")

# The opt-out columns in the order of the staging table's opt_* columns.
_OPT_OUT_FIELDS = ("opted_out", "email_opted_out", "sms_opted_out", "push_opted_out")

# Column sizes of the schema, checked here so a long value rejects its row, not the chunk.
_LIMITS = {"external_id": 255, "first_name": 255, "last_name": 255, "locale": 35,
           "push_token": 1024, "push_app_id": 255, "push_platform": 16}

# A str as a JSON string, non-ASCII kept (the C encoder json.dumps uses for ensure_ascii=False).
_json_text: Callable[[str], str] = json.encoder.encode_basestring


def _name(text: str) -> str:
    return re.sub(r"[\s_.\-]", "", text.strip().lower())


@dataclass(frozen=True)
class ImportResult:
    imported: int  # new profiles created
    updated: int  # existing profiles updated
    rejected: int  # rows written to the rejects file


@dataclass(frozen=True)
class ImportTuning:
    """How the work is cut up; the defaults suit the command line."""

    chunk_bytes: int = CHUNK_BYTES
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    pool_min_bytes: int = POOL_MIN_BYTES


# --- Phone numbers: a fast path to normalize_phone -------------------------------------------
#
# phonenumbers spends ~75 µs on a number, mostly in generic parsing and in re-looking-up its
# metadata; that alone would cap an import of a file where half the rows have numbers below
# 30,000 rows/s of CPU. For numbers written with digits, spaces and . / ( ) - only, what parse
# and is_valid_number do comes down to a few steps over the country's metadata, compiled here
# once per country. Each step below names the phonenumbers function it mirrors; wherever parse
# would take a branch not mirrored here (an IDD or the country code written without "+", a
# national prefix transform rule, leading zeros, lengths it rejects), phone_value falls back to
# normalize_phone itself. tests/test_profile_import.py checks the equivalence against
# normalize_phone over every region's example numbers in several forms and thousands of
# generated ones. It belongs in domain.addresses next to the email fast path.

_INTERNATIONAL = re.compile(r"\+[0-9 ./()\-]*")
_NATIONAL = re.compile(r"[0-9(][0-9 ./()\-]*")
_NOT_DIGITS = re.compile(r"[^0-9]")


@dataclass(frozen=True, slots=True)
class _Desc:
    """A PhoneNumberDesc as _is_number_matching_desc uses it."""

    lengths: frozenset[int]  # empty: any length
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, desc: Any) -> _Desc | None:
        if desc is None or not desc.national_number_pattern:
            return None  # _match_national_number: no pattern, no match
        return cls(frozenset(desc.possible_length), re.compile(desc.national_number_pattern))

    def matches(self, nsn: str) -> bool:
        return ((not self.lengths or len(nsn) in self.lengths)
                and self.pattern.fullmatch(nsn) is not None)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One region's metadata as _number_type_helper reads it: valid when the general
    description and any of the type descriptions match."""

    general: _Desc | None
    types: tuple[_Desc, ...]
    leading_digits: re.Pattern[str] | None

    @classmethod
    def of(cls, metadata: Any) -> _Plan:
        # Which type matches does not matter for validity, only that one does: the common ones
        # are tried first. The mobile pattern counts only when it differs from the fixed-line one.
        types = [metadata.fixed_line, metadata.toll_free, metadata.premium_rate,
                 metadata.shared_cost, metadata.voip, metadata.personal_number, metadata.pager,
                 metadata.uan, metadata.voicemail]
        if not metadata.same_mobile_and_fixed_line_pattern:
            types.insert(0, metadata.mobile)
        return cls(_Desc.of(metadata.general_desc),
                   tuple(d for d in map(_Desc.of, types) if d is not None),
                   re.compile(metadata.leading_digits) if metadata.leading_digits else None)

    def valid(self, nsn: str) -> bool:
        return (self.general is not None and self.general.matches(nsn)
                and any(t.matches(nsn) for t in self.types))


@dataclass(frozen=True, slots=True)
class _Country:
    """A country calling code: its regions (for is_valid_number) and its main region's parsing
    rules (for parse)."""

    code: int
    regions: tuple[_Plan, ...]
    national_prefix: re.Pattern[str] | None
    transform_rule: bool
    general_pattern: re.Pattern[str] | None
    idd: re.Pattern[str] | None
    lengths: tuple[int, ...]  # the general description's possible lengths, ascending
    local_lengths: frozenset[int]  # ... and its local-only ones

    def possible_length(self, nsn: str) -> bool:
        """_test_number_length (number type unknown) gives neither TOO_SHORT, nor
        IS_POSSIBLE_LOCAL_ONLY, nor INVALID_LENGTH: a known length, or longer than all."""
        size = len(nsn)
        return size not in self.local_lengths and (size in self.lengths
                                                   or size > self.lengths[-1])

    def valid(self, nsn: str) -> bool:
        """is_valid_number: the region is the only one of the code, else the first whose leading
        digits or number types fit (region_code_for_number); then its types must fit."""
        if len(self.regions) == 1:
            return self.regions[0].valid(nsn)
        for region in self.regions:
            if region.leading_digits is not None:
                if region.leading_digits.match(nsn):
                    return region.valid(nsn)
            elif region.valid(nsn):
                return True
        return False


_COUNTRIES: dict[int, _Country | None] = {}


def _country(code: int) -> _Country | None:
    if code not in _COUNTRIES:
        _COUNTRIES[code] = _compile_country(code)
    return _COUNTRIES[code]


def _compile_country(code: int) -> _Country | None:
    main = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
        code, phonenumbers.region_code_for_country_code(code))
    plans = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None or (region != phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY and
                                phonenumbers.country_code_for_valid_region(region) != code):
            return None  # is_valid_number_for_region would answer differently: leave it to it
        plans.append(_Plan.of(metadata))
    if main is None or not plans or main.general_desc is None:
        return None
    general = main.general_desc
    if not general.possible_length or list(general.possible_length) != sorted(
            general.possible_length):
        return None  # _test_number_length reads them as sorted and non-empty
    return _Country(
        code, tuple(plans),
        re.compile(main.national_prefix_for_parsing) if main.national_prefix_for_parsing
        else None,
        bool(main.national_prefix_transform_rule),
        re.compile(general.national_number_pattern) if general.national_number_pattern
        else None,
        re.compile(main.international_prefix) if main.international_prefix else None,
        tuple(general.possible_length), frozenset(general.possible_length_local_only))


def phone_value(raw: str, default_region: str) -> str:
    """`normalize_phone(raw, default_region).value`, about ten times faster for numbers written
    with digits, spaces and . / ( ) - (see above)."""
    text = raw.strip()
    if text.startswith("00"):  # as normalize_phone does
        text = "+" + text[2:]
    if len(text) <= 250:
        if _INTERNATIONAL.fullmatch(text):
            known, value = _international(_NOT_DIGITS.sub("", text))
        elif _NATIONAL.fullmatch(text):
            known, value = _national(_NOT_DIGITS.sub("", text), default_region)
        else:
            known, value = False, None
        if known:
            if value is None:
                raise InvalidAddress("sms", raw, "not a valid phone number for its region")
            return value
    return normalize_phone(raw, default_region).value


def _international(digits: str) -> tuple[bool, str | None]:
    """(whether the fast path decides, the E.164 number or None when it is not valid)."""
    # _maybe_extract_country_code: more than two digits after the plus; _extract_country_code:
    # the first one to three of them that are a known country calling code.
    if len(digits) <= 2 or digits[0] == "0":
        return False, None
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return False, None
    country = _country(code)
    national = digits[size:]
    # parse: no national prefix to strip (_maybe_strip_national_prefix_carrier_code finds none),
    # a length it accepts, no leading zero (_set_italian_leading_zeros_for_phone_number).
    if (country is None or not 2 <= len(national) <= 17 or national[0] == "0"
            or (country.national_prefix is not None and country.national_prefix.match(national))):
        return False, None
    return True, f"+{code}{national}" if country.valid(national) else None


def _national(digits: str, default_region: str) -> tuple[bool, str | None]:
    """A number without "+", read in the default region (parse with a region)."""
    region = default_region.upper()
    if len(digits) < 3 or region not in phonenumbers.SUPPORTED_REGIONS:
        return False, None  # shorter: parse's viability check words its error differently
    code = phonenumbers.country_code_for_valid_region(region)
    country = _country(code)
    # Only a country's main region: parse strips the prefix by the default region's metadata,
    # compiled in _Country for the main one.
    if country is None or phonenumbers.region_code_for_country_code(code) != region:
        return False, None
    # _maybe_strip_i18n_prefix_and_normalize: no IDD; _maybe_extract_country_code: the number
    # does not start with the country code written without "+".
    if (country.idd is not None and country.idd.match(digits)) or digits.startswith(str(code)):
        return False, None
    national = digits
    match = country.national_prefix.match(national) if country.national_prefix else None
    if match is not None:
        # _maybe_strip_national_prefix_carrier_code without a transform rule: strip, unless the
        # number fits the general pattern only with the prefix on.
        if country.transform_rule:
            return False, None
        stripped = national[match.end():]
        general = country.general_pattern
        keep = (general is not None and general.fullmatch(national) is not None
                and general.fullmatch(stripped) is None)
        # parse keeps the stripped number only if _test_number_length accepts it.
        if not keep and country.possible_length(stripped):
            national = stripped
    if not 2 <= len(national) <= 17 or national[0] == "0":
        return False, None
    return True, f"+{code}{national}" if country.valid(national) else None


# --- The header ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Columns:
    """Where each of our fields is in a row (-1: not in the file), and the custom attributes."""

    header: tuple[str, ...]
    index: dict[str, int]
    attributes: tuple[tuple[int, str], ...]

    @classmethod
    def from_header(cls, header: list[str]) -> Columns:
        index: dict[str, int] = {}
        attributes: list[tuple[int, str]] = []
        seen: dict[str, str] = {}
        skip = 2 if tuple(_name(h) for h in header[:2]) == ("linenumber", "reason") else 0
        for i, raw in enumerate(header):
            label = raw.strip()
            if i < skip:
                continue
            if not label:
                raise ConsentryError(f"column {i + 1} of the header has no name")
            key = _name(label)
            if key in _READ_ONLY:
                continue
            target = _FIELDS.get(key, f"attribute {label.lower()}")
            if target in seen:
                raise ConsentryError(f"columns {seen[target]!r} and {label!r} of the header "
                                     "mean the same thing: keep one of them")
            seen[target] = label
            if key in _FIELDS:
                index[_FIELDS[key]] = i
            else:
                attributes.append((i, label))
        if "push_token" not in index:
            for dependent in ("push_app_id", "push_platform"):
                if dependent in index:
                    raise ConsentryError(f"column {header[index[dependent]].strip()!r} needs a "
                                         "push_token column")
        return cls(tuple(header), index, tuple(attributes))

    def at(self, name: str) -> int:
        return self.index.get(name, -1)

    def label(self, name: str) -> str:
        return self.header[self.index[name]].strip()


def _delimiter(header: str) -> str:
    """Comma or semicolon, whichever separates more fields of the header (outside quotes)."""
    unquoted = re.sub(r'"[^"]*"', "", header)
    return ";" if unquoted.count(";") > unquoted.count(",") else ","


@dataclass(frozen=True)
class Plan:
    """What reading and validating a block needs to know; sent once to each worker process."""

    columns: Columns
    delimiter: str
    default_region: str
    services: dict[str, int]  # slug -> id
    service_slug: str | None  # --service
    copy_text: bool  # PostgreSQL: rows carry their columns as COPY text too


# --- Cutting the file into blocks (main process) -------------------------------------------


@dataclass(frozen=True)
class Block:
    """A run of whole lines of the file."""

    first_line: int  # physical line number of its first line (the header is line 1)
    data: bytes
    end: int  # bytes of the file up to its end, for progress
    last: bool  # it runs to the end of the file


def _blocks(stream: BinaryIO, first_line: int, offset: int, size: int) -> Iterator[Block]:
    """The file after the header in blocks of about `size` bytes, the last one marked."""
    line, pending = first_line, b""
    while True:
        piece = stream.read(size)
        if not piece:
            yield Block(line, pending, offset, True)
            return
        offset += len(piece)
        data = pending + piece
        cut = _cut(data, force=len(data) >= 16 * size)
        if cut == 0:
            pending = data
            continue
        block, pending = data[:cut], data[cut:]
        yield Block(line, block, offset - len(pending), False)
        line += block.count(b"\n")


def _cut(data: bytes, *, force: bool) -> int:
    """Where to end a block: after the last line at which an even number of quotes has been seen
    (no quoted field open), looking back at most 1,000 lines. 0: read on. When `force`d (the
    block grew too large) or after 1,000 lines, after the last line anyway: the worker then hands
    back the record left open, which is read again with the next block."""
    end = data.rfind(b"\n") + 1
    if end == 0:
        return 0
    odd = data.count(b'"', 0, end) & 1
    candidate = end
    for _ in range(1000):
        if not odd:
            return candidate
        previous = data.rfind(b"\n", 0, candidate - 1) + 1
        if previous == 0:
            return end if force else 0
        odd ^= data.count(b'"', previous, candidate) & 1
        candidate = previous
    return end


# --- Reading a block (worker processes) ----------------------------------------------------

Record = tuple[int, list[str]]  # (physical line where the record starts, fields)
Reject = tuple[int, str, list[str]]  # (line, reason, what the line held)

# Appended to a block that does not end the file: if the block's last record is complete, the
# reader returns this as a record of its own; if a quoted field is still open, it swallows it.
_MARK = "\ue000end of block\ue000"
_SENTINEL = f'"{_MARK}"\n'


def _decode(data: bytes, first_line: int) -> tuple[str, dict[int, str]]:
    """The block as text, and why each line that is not UTF-8 is not (its bytes are kept as
    surrogates, so only the records holding them are rejected)."""
    try:
        return data.decode("utf-8"), {}
    except UnicodeDecodeError:
        pass
    bad: dict[int, str] = {}
    lines = data.split(b"\n")
    for k, raw in enumerate(lines):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad[first_line + k] = (f"line {first_line + k} is not valid UTF-8 (byte "
                                   f"0x{raw[exc.start]:02X} at position {exc.start + 1}): save "
                                   "the file as UTF-8")
    return data.decode("utf-8", "surrogateescape"), bad


def _printable(text: str) -> str:
    """Bytes that were not UTF-8 as \\xNN escapes, for the rejects file."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _line_start(text: str, k: int) -> int:
    """Offset of the k-th line (0-based) of text."""
    position = 0
    for _ in range(k):
        position = text.index("\n", position) + 1
    return position


def _line_text(text: str, k: int) -> str:
    start = _line_start(text, k)
    end = text.find("\n", start)
    return _printable(text[start:end if end >= 0 else len(text)].rstrip("\r"))


def _csv_error(exc: csv.Error, lines: int) -> str:
    why = str(exc)
    if "expected after" in why:
        why = f"a quoted field must end at a delimiter or the end of the line ({why})"
    elif "unexpected end of data" in why:
        why = "a quote opened on this line is never closed"
    more = (f"; the {lines - 1} line(s) after it were read again on their own"
            if lines > 1 else "")
    return f"not readable as CSV: {why}{more}"


def _parse(text: str, first_line: int, plan: Plan, bad: dict[int, str], open_end: bool,
           ) -> tuple[list[Record], list[Reject], int | None]:
    """The records of a block's text and what cannot be read, with physical line numbers.

    A record that spans lines and has the wrong number of fields is taken for a quote that is
    never closed: its first line is rejected and the lines after it are read again. With
    `open_end` (the file goes on after the block), a record still open at the block's end is not
    judged: the third value is its first line, to be read again with the next block."""
    width = len(plan.columns.header)
    records: list[Record] = []
    rejects: list[Reject] = []
    line = first_line
    while True:
        # Past this many lines a record has reached the sentinel (which is not part of the text).
        limit = text.count("\n") if open_end else sys.maxsize
        # strict: text after a closing quote, or a quote still open at the end of the file, is
        # an error rather than something quietly glued into the field.
        reader = csv.reader(io.StringIO(text + _SENTINEL if open_end else text, newline="\n"),
                            delimiter=plan.delimiter, quotechar='"', doublequote=True,
                            strict=True)
        done = 0  # lines of text consumed by the records before this one
        again = -1  # read the text again from this line (0-based), after a rejected one
        try:
            for fields in reader:
                read = reader.line_num
                if read == done + 1 and read <= limit and len(fields) == width and fields[0] \
                        and not bad:
                    records.append((line + done, fields))  # the usual record: one whole line
                    done = read
                    continue
                first, used = line + done, read - done
                if read > limit:
                    # The sentinel: on its own when the block ended cleanly, else swallowed.
                    return records, rejects, None if done == limit else first
                if used > 1 and len(fields) != width:
                    rejects.append((first, f"unbalanced quote: a quoted field opened on this "
                                    f"line runs on to line {first + used - 1} and the record "
                                    f"has {len(fields)} fields instead of {width}; the lines "
                                    "after this one were read again on their own",
                                    [_line_text(text, done)]))
                    again = done + 1
                    break
                done = read
                why = [bad[n] for n in range(first, first + used) if n in bad]
                if why:
                    rejects.append((first, "; ".join(why), [_printable(f) for f in fields]))
                elif not "".join(fields).strip():
                    continue  # a blank line, or a row of empty cells: nothing to import
                elif len(fields) != width:
                    rejects.append((first, f"wrong column count: {len(fields)} fields, the "
                                    f"header has {width}", fields))
                else:
                    records.append((first, fields))
            else:
                return records, rejects, None
        except csv.Error as exc:
            if reader.line_num > limit:
                return records, rejects, line + done  # open at the block's end: read on
            rejects.append((line + done, _csv_error(exc, reader.line_num - done),
                            [_line_text(text, done)]))
            again = done + 1
        text = text[_line_start(text, again):]
        line += again


# --- Validating a record (worker processes) ------------------------------------------------


@dataclass
class Processed:
    """A block read and validated: rows in sql.ROW_COLUMNS order (without the profile id and
    is_new, which matching adds), and the rows' tokens and subscriptions keyed by line."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tokens: list[tuple[int, str, str, str]] = field(default_factory=list)
    subscriptions: list[tuple[int, int, str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    open_record: Block | None = None  # the block's last record, still open at its end


def process(plan: Plan, block: Block) -> Processed:
    text, bad = _decode(block.data, block.first_line)
    records, rejects, open_line = _parse(text, block.first_line, plan, bad, not block.last)
    out = validate(plan, records)
    out.rejects = rejects + out.rejects
    if open_line is not None:
        data = block.data
        start = 0
        for _ in range(open_line - block.first_line):
            start = data.index(b"\n", start) + 1
        out.open_record = Block(open_line, data[start:], block.end, False)
    return out


def validate(plan: Plan, records: list[Record]) -> Processed:
    """Check and normalize each record; a record with any problem is rejected with all of them."""
    cols = plan.columns
    i_ext, i_email, i_phone = cols.at("external_id"), cols.at("email"), cols.at("phone")
    i_first, i_last, i_locale = cols.at("first_name"), cols.at("last_name"), cols.at("locale")
    opt_columns = [(cols.at(name), cols.label(name) if name in cols.index else name)
                   for name in _OPT_OUT_FIELDS]
    has_opt_columns = any(i >= 0 for i, _ in opt_columns)
    i_token, i_tokens = cols.at("push_token"), cols.at("push_tokens")
    i_subscriptions = cols.at("subscriptions")
    attributes = [(i, _json_text(name)) for i, name in cols.attributes]
    region = plan.default_region
    locales: dict[str, str | None] = {}
    out = Processed()
    for line, fields in records:
        problems: list[str] = []
        external_id = fields[i_ext].strip() if i_ext >= 0 else ""
        if len(external_id) > _LIMITS["external_id"]:
            problems.append(f"{cols.label('external_id')} is longer than "
                            f"{_LIMITS['external_id']} characters")
        email = email_key = phone = locale = None
        raw_email = fields[i_email].strip() if i_email >= 0 else ""
        if raw_email:
            try:
                address = normalize_email(raw_email)
                email, email_key = address.value, address.key
            except InvalidAddress as exc:
                problems.append(f"bad email address {raw_email!r}: {exc.why}")
        raw_phone = fields[i_phone].strip() if i_phone >= 0 else ""
        if raw_phone:
            try:
                phone = phone_value(raw_phone, region)
            except InvalidAddress as exc:
                problems.append(f"bad phone number {raw_phone!r}: {exc.why}")
        first_name = fields[i_first].strip() if i_first >= 0 else ""
        last_name = fields[i_last].strip() if i_last >= 0 else ""
        for name, value in (("first_name", first_name), ("last_name", last_name)):
            if len(value) > _LIMITS[name]:
                problems.append(f"{cols.label(name)} is longer than {_LIMITS[name]} characters")
        raw_locale = fields[i_locale].strip() if i_locale >= 0 else ""
        if raw_locale:
            if raw_locale in locales:
                locale = locales[raw_locale]
            else:
                try:
                    locale = locales[raw_locale] = _locale(raw_locale)
                except ConsentryError as exc:
                    problems.append(str(exc))
        flags: list[int | None] = [None, None, None, None]
        if has_opt_columns:
            for k, (i, label) in enumerate(opt_columns):
                if i >= 0 and (text := fields[i].strip()):
                    flag = _BOOLEANS.get(text.lower())
                    if flag is None:
                        problems.append(f"{label} {text!r} is not a yes/no value: expected 1/0, "
                                        "true/false, yes/no, ja/nein or y/n (empty: leave it as "
                                        "it is)")
                    flags[k] = flag
        tokens: list[tuple[int, str, str, str]] = []
        if (i_token >= 0 and fields[i_token].strip()) or (i_tokens >= 0
                                                         and fields[i_tokens].strip()):
            tokens = _tokens(cols, line, fields, problems)
        elif i_token >= 0 and _given(cols, fields, "push_app_id", "push_platform"):
            problems.append("push_app_id or push_platform without a push_token")
        subscriptions: list[tuple[int, int, str]] = []
        if plan.service_slug is not None or (i_subscriptions >= 0
                                             and fields[i_subscriptions].strip()):
            subscriptions = _subscriptions(plan, line, fields, problems)
        attributes_json = None
        if attributes:
            # A JSON object of text values, built from pre-encoded names (json.dumps of a dict
            # costs several times more and says the same).
            given = [f"{name}:{_json_text(v)}" for i, name in attributes
                     if (v := fields[i].strip())]
            if given:
                attributes_json = "{" + ",".join(given) + "}"
        if not (external_id or raw_email or raw_phone or tokens or problems):
            problems.append("no external_id, email, phone or push token: nothing to find or "
                            "reach the profile by")
        if problems:
            out.rejects.append((line, "; ".join(problems), fields))
            continue
        values = (external_id or None, email, email_key, phone, first_name or None,
                  last_name or None, locale, attributes_json)
        if plan.copy_text:
            # The main process reads the keys and addresses; the rest only travels as COPY text.
            out.rows.append((line, *values[:4], None, None, None, None, *flags,
                             _copy_text(values)))
        else:
            out.rows.append((line, *values, *flags, None))
        out.tokens += tokens
        out.subscriptions += subscriptions
    return out


# COPY's text format: tab-separated, \N for NULL, backslash escapes for what would break it.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")


def _copy_text(values: tuple[str | None, ...]) -> str:
    """A row's profile columns (external_id ... attributes) as COPY text, made in the worker so
    the main process only glues it to the profile id. (Escaping is rare: checked once a row.)"""
    given = [v for v in values if v is not None]
    if _COPY_SPECIAL.search("".join(given)):
        return "\t".join("\\N" if v is None else v.translate(_COPY_ESCAPES) for v in values)
    return "\t".join("\\N" if v is None else v for v in values)


def _locale(raw: str) -> str | None:
    locale = normalize_locale(raw)
    if locale is not None and len(locale) > _LIMITS["locale"]:
        raise ConsentryError(f"locale {raw!r} is longer than {_LIMITS['locale']} characters")
    return locale


def _given(cols: Columns, fields: list[str], *names: str) -> bool:
    return any(cols.at(n) >= 0 and fields[cols.at(n)].strip() for n in names)


def _tokens(cols: Columns, line: int, fields: list[str], problems: list[str],
            ) -> list[tuple[int, str, str, str]]:
    def cell(name: str) -> str:
        return fields[cols.at(name)].strip() if cols.at(name) >= 0 else ""

    wanted: list[tuple[str, str, str]] = []
    if cell("push_token"):
        wanted.append((cell("push_token"), cell("push_app_id"), cell("push_platform")))
    elif _given(cols, fields, "push_app_id", "push_platform"):
        problems.append("push_app_id or push_platform without a push_token")
    if cell("push_tokens"):
        try:
            items = json.loads(cell("push_tokens"))
            if not isinstance(items, list):
                raise ValueError
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("token"), str):
                    raise ValueError
                wanted.append((item["token"], str(item.get("app_id") or "").strip(),
                               str(item.get("platform") or "").strip()))
        except ValueError:
            problems.append('push_tokens is not a JSON list of {"token", "app_id", '
                            '"platform"} objects')
    tokens = []
    for raw, app_id, platform in wanted:
        try:
            token = normalize_push_token(raw).value
        except InvalidAddress as exc:
            problems.append(f"bad push token: {exc.why}")
            continue
        if len(token) > _LIMITS["push_token"]:
            problems.append(f"push token is longer than {_LIMITS['push_token']} characters")
        elif len(app_id) > _LIMITS["push_app_id"] or len(platform) > _LIMITS["push_platform"]:
            problems.append(f"push app id or platform is longer than {_LIMITS['push_app_id']} "
                            f"or {_LIMITS['push_platform']} characters")
        else:
            tokens.append((line, token, app_id, platform))
    return tokens


def _subscriptions(plan: Plan, line: int, fields: list[str], problems: list[str],
                   ) -> list[tuple[int, int, str]]:
    i = plan.columns.at("subscriptions")
    states: dict[str, str] = {}
    for part in (fields[i] if i >= 0 else "").split(SUBSCRIPTION_SEPARATOR):
        if not part.strip():
            continue
        slug, sep, state = (p.strip() for p in part.partition(SUBSCRIPTION_STATE_SEPARATOR))
        state = state.lower()
        if not sep or state not in _STATES:
            problems.append(f"subscriptions entry {part.strip()!r} is not SERVICE:STATE with "
                            f"a state of {', '.join(sorted(_STATES))}")
        elif slug not in plan.services:
            problems.append(f"unknown service {slug!r} in subscriptions")
        elif slug in states:
            problems.append(f"service {slug!r} is twice in subscriptions")
        else:
            states[slug] = state
    if plan.service_slug is not None:
        given = states.get(plan.service_slug)
        if given is not None and given != SubscriptionState.SUBSCRIBED:
            problems.append(f"subscriptions says {plan.service_slug}:{given} but --service "
                            f"{plan.service_slug} subscribes every row")
        states[plan.service_slug] = SubscriptionState.SUBSCRIBED.value
    return [(line, plan.services[slug], state) for slug, state in states.items()]


# --- Reading in worker processes -----------------------------------------------------------

_worker_plan: Plan | None = None


def _init_worker(plan: Plan) -> None:
    global _worker_plan
    _worker_plan = plan


def _process_in_worker(block: Block) -> Processed:
    assert _worker_plan is not None
    return process(_worker_plan, block)


def _in_order(plan: Plan, blocks: Iterator[Block], workers: int,
              ) -> Iterator[tuple[Block, Processed]]:
    """Each block with its reading, in file order; with workers, several blocks at once."""
    return in_order(_process_in_worker, blocks, workers,
                    here=functools.partial(process, plan), initializer=_init_worker,
                    initargs=(plan,))


def _read(plan: Plan, blocks: Iterator[Block], workers: int,
          ) -> Iterator[tuple[Block, Processed]]:
    """The blocks read as one sequential pass over the file would: a record a block left open is
    read again together with the block after it (the worker read that block from its first line,
    not from the open record)."""
    open_record: Block | None = None
    for block, processed in _in_order(plan, blocks, workers):
        if open_record is not None:
            block = Block(open_record.first_line, open_record.data + block.data, block.end,
                          block.last)
            processed = process(plan, block)
        open_record = processed.open_record
        yield block, processed


def _fields_of(block: Block, lines: set[int], delimiter: str) -> dict[int, list[str]]:
    """The fields of the records starting at `lines`, read again from the block (for the rows
    rejected after validation, whose fields the workers did not send back)."""
    data = block.data
    starts = [0, *(m.end() for m in re.finditer(b"\n", data))]

    def physical(k: int) -> Iterator[str]:
        while k < len(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(data)
            yield data[starts[k]:end].decode("utf-8", "surrogateescape")
            k += 1

    found = {}
    for line in lines:
        fields = next(csv.reader(physical(line - block.first_line), delimiter=delimiter), [])
        found[line] = [_printable(f) for f in fields]
    return found


# --- Writing (main process) ----------------------------------------------------------------


@dataclass(frozen=True)
class _Service:
    id: int
    slug: str
    channel: str
    validity_days: int | None


# The order of the opt-out flags in a validated row (rows[9:13]) and of opt_* in the staging.
_SCOPES = ("all", "email", "sms", "push")


class _Writer:
    """Writes processed blocks, set-based, one transaction each; keeps what must hold across the
    whole file (a key or a profile comes once)."""

    def __init__(self, conn: sa.Connection, settings: Settings, origin: Origin,
                 services: dict[int, _Service], source_name: str) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.settings = settings
        self.origin = origin
        self.services = services
        self.source_name = source_name
        # What the driver takes for a timestamp column (SQLite: text in SQLAlchemy's format).
        self.db_time = UTCDateTime().bind_processor(conn.dialect)
        self.external_ids: dict[str, int] = {}  # -> first line
        self.email_keys: dict[str, int] = {}
        self.matched: dict[int, int] = {}  # existing profile -> the line that updates it
        # Email keys a row took away from an existing profile (it gave it another) -> the line.
        self.released: dict[str, int] = {}
        self.imported = 0
        self.updated = 0
        self.sequence: str | None = None
        self.staged = False
        self.has_suppressions = False

    def write(self, processed: Processed) -> list[Reject]:
        """Write the good rows; returns the rows rejected here (fields to be filled in)."""
        rejects: list[Reject] = []
        rows = self._unique(processed.rows, rejects)
        if not rows:
            return rejects
        try:
            self._write(rows, processed, rejects)
        except sa.exc.IntegrityError as exc:
            raise ConsentryError(
                f"lines {rows[0][0]}-{rows[-1][0]}: someone else wrote the same profiles while "
                f"they were being imported ({exc.orig}); the lines before are imported, run the "
                "import again to match and update what is there now") from exc
        return rejects

    def _write(self, rows: list[tuple[Any, ...]], processed: Processed,
               rejects: list[Reject]) -> None:
        with self.conn.begin():
            now = utcnow()
            self._prepare()
            existing, new = self._match(rows, rejects)
            self.updated += len(existing)
            self.imported += len(new)
            events = self._create(new, processed, now) if new else []
            changed: list[Any] = []
            new_tokens: list[Any] = []
            if existing:
                lines = {profile_id: row[0] for row, profile_id in existing}
                more, changed, new_tokens = self._update(existing, processed, lines, now)
                events += more
            ledger.append(self.conn,
                          sorted(events, key=lambda e: (e.evidence or {}).get("line", 0)))
            if self.has_suppressions:
                self._reapply_suppressions(new, processed, changed, new_tokens, now)

    def _unique(self, rows: list[tuple[Any, ...]], rejects: list[Reject]) -> list[tuple[Any, ...]]:
        """Rows whose key came earlier in the file are rejected (in file order, across chunks)."""
        kept = []
        external_ids, email_keys = self.external_ids, self.email_keys
        for row in rows:
            line, external_id, email_key = row[0], row[1], row[3]
            if external_id is not None:
                first = external_ids.get(external_id)
                if first is not None:
                    rejects.append((line, f"duplicate external_id {external_id!r}: line "
                                    f"{first} of this file has it already", []))
                    continue
                external_ids[external_id] = line
            elif email_key is not None:
                first = email_keys.get(email_key)
                if first is not None:
                    rejects.append((line, f"duplicate email {row[2]!r}: line {first} of this "
                                    "file has it already (give both rows an external_id to "
                                    "import them as two profiles)", []))
                    continue
            if email_key is not None and email_key not in email_keys:
                email_keys[email_key] = line
            kept.append(row)
        return kept

    def _prepare(self) -> None:
        conn = self.conn
        if self.dialect == "postgresql":
            for statement in sql.CHUNK_PLANNER_POSTGRESQL:
                conn.exec_driver_sql(statement)
        if self.staged:
            if self.dialect != "postgresql":  # PostgreSQL empties them at each commit
                for statement in sql.CLEAR_STAGING:
                    conn.exec_driver_sql(statement)
            return
        for statement in sql.create_staging(self.dialect):
            conn.exec_driver_sql(statement)
        if self.dialect == "postgresql":
            self.sequence = conn.execute(sql.PROFILE_ID_SEQUENCE).scalar_one()
        self.has_suppressions = conn.execute(sql.ANY_SUPPRESSION).first() is not None
        self.staged = True

    def _keys(self, keys: list[str]) -> Any:
        return keys if self.dialect == "postgresql" else json.dumps(keys)

    def _match(self, rows: list[tuple[Any, ...]], rejects: list[Reject],
               ) -> tuple[list[tuple[tuple[Any, ...], int]], list[tuple[tuple[Any, ...], int]]]:
        """(rows of existing profiles, rows of new ones), each with its profile id."""
        conn = self.conn
        external_ids = [r[1] for r in rows if r[1] is not None]
        by_external: dict[str, tuple[int, str | None]] = (
            {external_id: (profile_id, key) for external_id, profile_id, key in conn.execute(
                sql.BY_EXTERNAL_IDS[self.dialect], {"keys": self._keys(external_ids)})}
            if external_ids else {})
        email_keys = sorted({r[3] for r in rows if r[1] is None and r[3] is not None})
        holders: dict[str, list[int]] = defaultdict(list)
        if email_keys:
            for key, profile_id in conn.execute(sql.BY_EMAIL_KEYS[self.dialect],
                                                {"keys": self._keys(email_keys)}):
                holders[key].append(profile_id)
        existing: list[tuple[tuple[Any, ...], int]] = []
        new: list[tuple[Any, ...]] = []
        for row in rows:
            if row[1] is not None:
                profile_id, key = by_external.get(row[1], (None, None))
                if key is not None and row[3] is not None and row[3] != key:
                    self.released.setdefault(key, row[0])
            elif row[3] in self.released:
                # Whether this row's email still finds its old profile would depend on where the
                # file was cut into chunks (before or after that change was written).
                rejects.append((row[0], f"email {row[2]!r} is the one line "
                                f"{self.released[row[3]]} of this file replaces on its profile; "
                                "add an external_id to say which profile this row is", []))
                continue
            elif row[3] is not None and row[3] in holders:
                ids = holders[row[3]]
                if len(ids) > 1:
                    rejects.append((row[0], f"ambiguous email: {len(ids)} profiles hold it (ids "
                                    f"{', '.join(map(str, ids))}); add an external_id to say "
                                    "which", []))
                    continue
                profile_id = ids[0]
            else:
                profile_id = None
            if profile_id is None:
                new.append(row)
                continue
            first = self.matched.get(profile_id)
            if first is not None:
                rejects.append((row[0], f"line {first} of this file already updates the "
                                f"profile this row matches (id {profile_id})", []))
                continue
            self.matched[profile_id] = row[0]
            existing.append((row, profile_id))
        return existing, list(zip(new, self._new_ids(len(new)), strict=True))

    def _new_ids(self, count: int) -> list[int]:
        if count == 0:
            return []
        conn = self.conn
        if self.dialect == "postgresql":
            # Straight from the driver: SQLAlchemy's row processing would cost more than the
            # query for tens of thousands of ids.
            driver = conn.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor:
                cursor.execute(sql.NEXT_IDS_POSTGRESQL, (self.sequence, count))
                return sorted(i for (i,) in cursor.fetchall())
        base = conn.execute(sql.MAX_PROFILE_ID).scalar_one()
        if conn.execute(sql.HAS_SQLITE_SEQUENCE).first() is not None:
            base = max(base, conn.execute(sql.SQLITE_SEQUENCE).scalar() or 0)
        return list(range(base + 1, base + count + 1))

    def _load(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.dialect == "postgresql":
            driver = self.conn.connection.driver_connection
            assert driver is not None
            with driver.cursor() as cursor, cursor.copy(sql.copy_rows(table, columns)) as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self.conn.exec_driver_sql(sql.insert_rows(table, columns), rows)

    def _load_text(self, table: str, columns: tuple[str, ...], lines: list[str]) -> None:
        """PostgreSQL: COPY rows already in COPY's text format."""
        if not lines:
            return
        driver = self.conn.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor, cursor.copy(sql.copy_rows(table, columns)) as copy:
            copy.write("".join(lines))

    def _time(self, value: datetime | None) -> Any:
        return self.db_time(value) if self.db_time is not None and value is not None else value

    def _expires(self, service: _Service, now: datetime) -> datetime | None:
        return now + timedelta(days=service.validity_days) if service.validity_days else None

    def _create(self, new: list[tuple[tuple[Any, ...], int]], processed: Processed,
                now: datetime) -> list[Event]:
        """New profiles and everything their rows say, written straight into the tables."""
        at = self._time(now)
        origin = self.origin
        if self.dialect == "postgresql":
            stamp = now.isoformat()
            self._load_text("profiles", sql.PROFILE_COLUMNS,
                            [f"{profile_id}\t{row[13]}\t{stamp}\t{stamp}\n"
                             for row, profile_id in new])
        else:
            self._load("profiles", sql.PROFILE_COLUMNS,
                       [(profile_id, *row[1:9], at, at) for row, profile_id in new])
        events: list[Event] = []
        opt_outs = []
        for row, profile_id in new:
            if row[9] is None and row[10] is None and row[11] is None and row[12] is None:
                continue
            for scope, flag in zip(_SCOPES, row[9:13], strict=True):
                if flag == 1:
                    opt_outs.append((profile_id, scope, at, origin.source, origin.actor,
                                     origin.note))
                    events.append(self._event(now, Kind.OPT_OUT, row[0], profile_id=profile_id,
                                              channel=scope, old_state="opted_in",
                                              new_state="opted_out"))
        self._load("opt_outs", sql.OPT_OUT_COLUMNS, opt_outs)
        ids = {row[0]: profile_id for row, profile_id in new}
        if processed.tokens:
            tokens = {(ids[line], token, app_id): platform
                      for line, token, app_id, platform in processed.tokens if line in ids}
            self._load("push_tokens", sql.TOKEN_COLUMNS,
                       [(profile_id, token, app_id, platform, at)
                        for (profile_id, token, app_id), platform in tokens.items()])
        subscriptions = []
        for line, service_id, state in processed.subscriptions:
            if line not in ids:
                continue
            service = self.services[service_id]
            subscribed = state == SubscriptionState.SUBSCRIBED
            subscriptions.append((ids[line], service_id, state, at, at if subscribed else None,
                                  self._time(self._expires(service, now)) if subscribed
                                  else None, at))
            events.append(self._event(now, Kind.SUBSCRIPTION, line, profile_id=ids[line],
                                      channel=service.channel, service=service.slug,
                                      old_state=None, new_state=state))
        self._load("subscriptions", sql.SUBSCRIPTION_COLUMNS, subscriptions)
        return events

    def _update(self, existing: list[tuple[tuple[Any, ...], int]], processed: Processed,
                lines: dict[int, int], now: datetime) -> tuple[list[Event], list[Any], list[Any]]:
        """Existing profiles, set-based through the staging tables; returns the ledger events,
        the addresses the rows gave profiles that did not hold them, and the new tokens."""
        conn = self.conn
        if self.dialect == "postgresql":
            self._load_text("import_rows", sql.STAGED_ROW_COLUMNS, [
                f"{row[0]}\t{profile_id}\t{row[13]}\t"
                + "\t".join("\\N" if flag is None else str(flag) for flag in row[9:13]) + "\n"
                for row, profile_id in existing])
        else:
            self._load("import_rows", sql.STAGED_ROW_COLUMNS,
                       [(row[0], profile_id, *row[1:13]) for row, profile_id in existing])
        staged_lines = {row[0] for row, _ in existing}
        tokens = [t for t in processed.tokens if t[0] in staged_lines]
        subscriptions = [s for s in processed.subscriptions if s[0] in staged_lines]
        self._load("import_tokens", sql.STAGED_TOKEN_COLUMNS, tokens)
        self._load("import_subscriptions", sql.STAGED_SUBSCRIPTION_COLUMNS, subscriptions)
        changed = list(conn.execute(sql.CHANGED_ADDRESSES)) if self.has_suppressions else []
        conn.execute(sql.UPDATE_PROFILES[self.dialect], {"now": now})
        new_tokens = conn.execute(sql.INSERT_TOKENS, {"now": now}).all() if tokens else []
        events: list[Event] = []
        if any(any(flag is not None for flag in row[9:13]) for row, _ in existing):
            events += self._opt_outs(now, lines)
        if subscriptions and self.dialect == "postgresql":
            conn.execute(sql.LOCK_SUBSCRIBERS)
        for service_id in sorted({s[1] for s in subscriptions}):
            events += self._subscribe(self.services[service_id], now, lines)
        return events, changed, new_tokens

    def _event(self, now: datetime, kind: str, line: int, **fields: Any) -> Event:
        evidence = {**(self.origin.evidence or {}), "file": self.source_name, "line": line}
        return self.origin.event(now, kind, evidence=evidence, **fields)

    def _opt_outs(self, now: datetime, lines: dict[int, int]) -> list[Event]:
        origin = self.origin
        params = {"now": now, "source": origin.source, "actor": origin.actor, "note": origin.note}
        events = [self._event(now, Kind.OPT_OUT, lines[profile_id], profile_id=profile_id,
                              channel=scope, old_state="opted_in", new_state="opted_out")
                  for profile_id, scope in self.conn.execute(sql.INSERT_OPT_OUTS, params)]
        events += [self._event(now, Kind.OPT_IN, lines[profile_id], profile_id=profile_id,
                               channel=scope, old_state="opted_out", new_state="opted_in")
                   for profile_id, scope in self.conn.execute(sql.DELETE_OPT_OUTS)]
        return events

    def _subscribe(self, service: _Service, now: datetime, lines: dict[int, int]) -> list[Event]:
        params = {"now": now, "service_id": service.id,
                  "expires_at": self._expires(service, now)}
        changes = self.conn.execute(sql.SUBSCRIPTION_CHANGES, params).all()
        if changes:
            self.conn.execute(sql.UPDATE_SUBSCRIPTIONS, params)
            self.conn.execute(sql.INSERT_SUBSCRIPTIONS, params)
        return [self._event(now, Kind.SUBSCRIPTION, lines[profile_id], profile_id=profile_id,
                            channel=service.channel, service=service.slug, old_state=old_state,
                            new_state=new_state)
                for profile_id, old_state, new_state in changes]

    def _reapply_suppressions(self, new: list[tuple[tuple[Any, ...], int]], processed: Processed,
                              changed: list[Any], new_tokens: list[Any], now: datetime) -> None:
        """Suppressions of the addresses this chunk gave profiles that did not hold them: all of
        a new profile's, and an existing one's changed email, phone and new tokens."""
        given: dict[int, list[Address]] = defaultdict(list)
        addresses = [(profile_id, row[2], row[3], row[4]) for row, profile_id in new]
        for profile_id, email, email_key, phone in [*addresses, *changed]:
            if email is not None and email_key is not None:
                given[profile_id].append(Address(Channel.EMAIL, email, email_key))
            if phone is not None:
                given[profile_id].append(Address(Channel.SMS, phone, phone))
        ids = {row[0]: profile_id for row, profile_id in new}
        tokens = [(ids[t[0]], t[1]) for t in processed.tokens if t[0] in ids]
        for profile_id, token in [*tokens, *new_tokens]:
            given[profile_id].append(Address(Channel.PUSH, token, token))
        suppression.reapply_many(self.conn, self.settings, given, self.origin, now)

    def drop_staging(self) -> None:
        if self.staged:
            with self.conn.begin():
                for statement in sql.DROP_STAGING:
                    self.conn.exec_driver_sql(statement)


# --- The import ----------------------------------------------------------------------------


def import_profiles(engine: sa.Engine, settings: Settings, path: Path, *,
                    rejects_path: Path | None, service_slug: str | None, origin: Origin,
                    progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Upsert the profiles of a CSV file; every bad row goes to `rejects_path` with its line."""
    return run_import(engine, settings, path, rejects_path=rejects_path,
                      service_slug=service_slug, origin=origin, progress=progress)


def run_import(engine: sa.Engine, settings: Settings, path: Path, *,
               rejects_path: Path | None, service_slug: str | None, origin: Origin,
               progress: Callable[[int, int], None] | None = None,
               tuning: ImportTuning | None = None) -> ImportResult:
    """`import_profiles` with the cutting-up of the work made explicit (tests, benchmarks)."""
    tuning = tuning or ImportTuning()
    total = path.stat().st_size
    with engine.connect() as conn, path.open("rb") as stream:
        services = _services(conn, service_slug)
        header, delimiter, bom, header_bytes = _header(stream, path)
        plan = Plan(Columns.from_header(header), delimiter, settings.default_region,
                    {s.slug: s.id for s in services.values()}, service_slug,
                    conn.dialect.name == "postgresql")
        blocks = _blocks(stream, 2, header_bytes, tuning.chunk_bytes)
        workers = tuning.workers if total >= tuning.pool_min_bytes else 1
        writer = _Writer(conn, settings, origin, services, path.name)
        rejects = _Rejects(rejects_path, delimiter, bom, header)
        try:
            with _sqlite_cache(conn):
                for block, processed in _read(plan, blocks, workers):
                    rejects.add(block, processed.rejects + writer.write(processed))
                    if progress is not None:
                        progress(block.end, total)
        finally:
            rejects.close()
            writer.drop_staging()
    return ImportResult(writer.imported, writer.updated, rejects.count)


def _services(conn: sa.Connection, service_slug: str | None) -> dict[int, _Service]:
    """All services (the subscriptions column may name any); --service must be one of them."""
    with conn.begin():
        services = {r.id: _Service(r.id, r.slug, r.channel, r.validity_days)
                    for r in conn.execute(sql.ALL_SERVICES)}
    if service_slug is not None and service_slug not in {s.slug for s in services.values()}:
        raise NotFound(f"unknown service {service_slug!r} (--service): create it with "
                       "`consentry services create` first; nothing was imported")
    return services


def _header(stream: BinaryIO, path: Path) -> tuple[list[str], str, bool, int]:
    """(column names, delimiter, whether the file has a BOM, bytes of the header line)."""
    first = stream.readline()
    bom = first.startswith(b"\xef\xbb\xbf")
    try:
        line = first.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise ConsentryError(f"{path}: the header line is not valid UTF-8; save the file as "
                             "UTF-8") from None
    if not line.strip():
        raise ConsentryError(f"{path}: no header line (the first line names the columns)")
    delimiter = _delimiter(line)
    return next(csv.reader([line], delimiter=delimiter)), delimiter, bom, len(first)


@contextmanager
def _sqlite_cache(conn: sa.Connection) -> Iterator[None]:
    """SQLite: a page cache that holds the indexes the import writes into (import_sql.py)."""
    if conn.dialect.name != "sqlite":
        yield
        return
    with conn.begin():
        previous = conn.exec_driver_sql(sql.SQLITE_CACHE_SIZE).scalar()
        conn.exec_driver_sql(f"{sql.SQLITE_CACHE_SIZE} = -{sql.SQLITE_IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        with conn.begin():
            conn.exec_driver_sql(f"{sql.SQLITE_CACHE_SIZE} = {int(previous)}")


class _Rejects:
    """The rejects file: line_number, reason, then the row's fields, in the input's delimiter
    and BOM so it opens as the input did; counted even when not written."""

    def __init__(self, path: Path | None, delimiter: str, bom: bool, header: list[str]) -> None:
        self.count = 0
        self.delimiter = delimiter
        self.out = (path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8")
                    if path is not None else None)
        self.writer = csv.writer(self.out, delimiter=delimiter) if self.out else None
        if self.writer is not None:
            self.writer.writerow([*REJECT_COLUMNS, *header])

    def add(self, block: Block, rejects: list[Reject]) -> None:
        self.count += len(rejects)
        if self.writer is None or not rejects:
            return
        # Rows rejected after validation carry no fields: read them again from the block.
        missing = {line for line, _, fields in rejects if not fields}
        found = _fields_of(block, missing, self.delimiter) if missing else {}
        self.writer.writerows([line, why, *(fields or found.get(line, []))]
                              for line, why, fields in sorted(rejects, key=lambda r: r[0]))

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
