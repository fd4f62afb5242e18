"""Classify a raw feedback message (RFC 5322 bytes) into a `Report` (domain.md section 5).

Pure, no I/O. Handles RFC 3464 DSNs, RFC 5965 ARF reports, Amazon SES notifications sent as mail,
the non-standard bounces real MTAs send, auto-replies (RFC 3834 and the usual headers and
subjects, in several languages), read receipts, delay notices and mail to the List-Unsubscribe
`mailto:` address. The reasons follow domain.md section 4 via `domain.failures.reason_for`:
what the text says about the mailbox beats the status code, and a transient signal (4.x.x, 4xx)
never makes a hard failure.

    classify(raw, envelope_to=()) -> Report
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.policy import compat32
from email.utils import getaddresses

from consentry.domain.failures import (
    FastPattern,
    basic_code,
    enhanced_status,
    reason_for,
)
from consentry.domain.feedback import Kind, RecipientResult, Report
from consentry.domain.quarantine import FailureClass
from consentry.feedback.classify_text import (
    ADDR,
    address_of,
    best_line,
    collapse,
    decode_words,
    find_recipients,
    header,
    is_system,
    part_text,
    split_original,
    unjis,
)

__all__ = ["classify"]

_PARSER = BytesParser(policy=compat32)
_HEADER_PARSER = HeaderParser(policy=compat32)

# The stdlib parser compiles a regular expression for every multipart boundary it meets
# (email.feedparser), and boundaries are unique per message: about 0.3 ms a message, as much
# as the rest of the parse. Each declared boundary is renamed to a fixed token first, in its
# Content-Type parameter and at the start of the lines that use it, so `re`'s cache answers;
# every occurrence is renamed alike, so the MIME structure is what it was.
_BOUNDARY_PARAM = re.compile(rb'(boundary\s*=\s*"?)([^"\s;]{1,200})', re.I)
_MAX_RENAMED = 16


def _canonical_boundaries(raw: bytes) -> bytes:
    names: dict[bytes, bytes] = {}
    for match in _BOUNDARY_PARAM.finditer(raw):
        names.setdefault(match.group(2), b"=_consentry_boundary_%d" % len(names))
    if not names or len(names) > _MAX_RENAMED or b"=_consentry_boundary_" in raw:
        return raw
    renamed = _BOUNDARY_PARAM.sub(lambda m: m.group(1) + names[m.group(2)], raw)
    # Longest first: one boundary may begin with another.
    for name in sorted(names, key=len, reverse=True):
        renamed = renamed.replace(b"\n--" + name, b"\n--" + names[name])
    return renamed

_UNSUB_TAG = re.compile(r"^u-\d+-\d+-[0-9a-f]{20}@", re.I)
_ENVELOPE_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to")

_BOUNCE_FROM = re.compile(
    r"mailer[-_ ]?daemon|post[-_ ]?master|mail ?delivery|delivery ?(?:sub)?system|"
    r"mail ?administrator|system ?administrator|mail ?system|mail ?router|"
    r"internet mail service|microsoftexchange|mmdf|smtp ?gateway|returned ?mail|"
    r"mail ?transport|bounce", re.I)
_BOUNCE_SUBJECT = FastPattern(
    r"undeliver|undelivered|delivery (?:status|failure|failed|problem|report|notification|"
    r"error|has failed)|returned mail|mail delivery|failure notice|failed delivery|"
    r"could not (?:be )?deliver|couldn'?t be delivered|non-?deliver|nondeliverable|"
    r"not delivered|bounced?|returned to sender|message (?:not delivered|delivery failure|"
    r"status)|mail system error|permanent (?:error|failure)|unable to deliver|"
    r"failure delivery|delivery unsuccessful|mail failure|returned message|"
    r"unzustellbar|nicht zustellbar|non recapitabile|no se puede entregar|no entregado|"
    r"non remis|non distribu|onbestelbaar|olevererbart|n[aã]o entregue|"
    r"delivery (?:delayed|notification)|warning: could not send|delayed mail|"
    r"mail could not be delivered|rejected|ndn|ndr")
_BOUNCE_BODY = FastPattern(
    r"this is the mail system at|qmail-send program|wasn'?t able to deliver|"
    r"could not be delivered|couldn'?t be delivered|was not delivered|permanent fatal errors|"
    r"unable to deliver|did not reach (?:some or all|the following)|delivery (?:has )?failed|"
    r"delivery to the following recipient|following addresses? (?:had|failed)|"
    r"undeliverable|transcript of session|permanent error|message could not|"
    r"mail delivery failed|not be delivered|returned to you|non-?delivery|user unknown|"
    r"no such user|message was not sent|delivery failure")
_WARNING = FastPattern(
    r"\bwarning\b|delay(?:ed)?\b|postponed|not yet been delivered|has not yet|"
    r"will (?:continue to )?(?:retry|try|attempt|be made)|still (?:being )?(?:retried|trying|"
    r"attempting)|will be retried|no action is required|(?:do not|don'?t|no) need to resend|"
    r"do not resend|will keep trying|will try again|not been delivered yet|"
    r"temporarily deferred|attempts will continue|continue to (?:try|attempt)|"
    r"will be returned (?:to you )?(?:if|after)")
_PERMANENT = FastPattern(
    r"permanent|fatal|given up|giving up|gave up|will not (?:be )?(?:try|retr)|"
    r"not going to try again|deleted|no further (?:attempts|delivery)|"
    r"(?:has|have) been (?:returned|bounced)|aborted")

_AUTO_SUBJECT = FastPattern(
    r"out of (?:the )?office|\bo\.?o\.?o\b|auto(?:matic|matische|matisch)?[ -]?(?:reply|"
    r"response|answer|antwort|risposta|respuesta|r[ée]ponse|resposta|antwoord|svar|vastaus)|"
    r"^auto:|\bautoreply|\bautoresponse|\bautorespond|vacation|abwesen|abwesenheit|"
    r"nicht im b[üu]ro|au[ßs]er (?:haus|b[üu]ro|dienst)|urlaub|absen(?:ce|t|te)\b|"
    r"r[ée]ponse automatique|risposta automatica|respuesta autom[aá]tica|"
    r"resposta autom[aá]tica|automatisch antwoord|afwezig|fuera de la oficina|"
    r"fuori ufficio|fora do escrit[oó]rio|ausente|ferie|lomalla|poza biurem|"
    r"away from (?:the |my )?(?:office|desk)|on (?:annual )?leave|on holiday|"
    r"thank you for (?:your )?(?:e-?mail|message|contacting)|we (?:have )?received your|"
    r"ticket (?:#|number|id)|request received|自動|不在")
_AUTO_BODY = FastPattern(
    r"out of (?:the )?office|i am (?:currently )?(?:away|out|on (?:vacation|holiday|leave))|"
    r"i'?m (?:currently )?(?:away|out of|on (?:vacation|holiday|leave))|"
    r"(?:limited|no) access to (?:my )?e-?mail|will (?:be )?(?:back|return)|"
    r"bin (?:bis|ab|vom|derzeit|zurzeit|nicht)|abwesend|au[ßs]er haus|"
    r"je suis absent|absente? du bureau|estar[ée] fuera|estoy fuera|fuera de la oficina|"
    r"sar[òo] assente|fuori ufficio|estarei ausente|ben (?:afwezig|met vakantie)|"
    r"this is an automatic|this is an automated|automatic(?:ally generated)? (?:reply|response)|"
    r"auto-?reply")
_UNSUB_WORDS = FastPattern(
    r"unsubscribe|unsubscription|remove me|opt[ -]?out|take me off|stop (?:sending|e-?mail)|"
    r"abmelden|abbestellen|austragen|newsletter k[üu]ndigen|d[ée]sabonner|d[ée]sinscri|"
    r"d[ée]sinscription|me d[ée]sinscrire|darse de baja|darme de baja|dar de baja|"
    r"cancelar (?:la )?suscripci[oó]n|desuscribir|annulla(?:re)? (?:l'?)?iscrizione|"
    r"disiscriv|cancella(?:re|mi)|descadastr|cancelar inscri|afmelden|uitschrijven|"
    r"avregistrer|avsluta prenumeration|wypisz")
_QUOTE_START = re.compile(
    r"^(?:>|-{2,}\s*(?:original|urspr|message d'origine|mensaje original)|"
    r"on .{0,200} wrote:|am .{0,200} schrieb|le .{0,200} a [ée]crit|el .{0,200} escribi[óo]|"
    r"from:\s|von:\s|de:\s|da:\s|_{5,})", re.I | re.M)

_SMTP_REPLY = re.compile(r"(?:^|\s)[45][0-5]\d[ -]|\b[45]\.\d{1,3}\.\d{1,3}\b", re.M)
_INLINE_DSN = re.compile(r"^[ \t]*(?:final|original)-recipient[ \t]*:", re.I | re.M)
_STATUS_FIELD = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_GENERIC_STATUS = frozenset({"5.0.0", "4.0.0", "2.0.0", "5.5.0", "4.5.0"})
_MSGID = re.compile(r"^message-id:\s*<?([^<>\s]+@[^<>\s]+?)>?\s*$", re.I | re.M)
_TO_LINE = re.compile(r"^to:\s*(.+(?:\n[ \t].+)*)", re.I | re.M)
_FROM_LINE = re.compile(r"^(?:from|return-path|sender):\s*(.+)$", re.I | re.M)
_COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other", "complaint", "opt-out",
                              "opt-out-list", "unsubscribe", ""})


@dataclass
class _Parts:
    """What one walk over the MIME tree found (not descending into returned messages)."""

    texts: list[Message] = field(default_factory=list)
    dsn: list[Message] = field(default_factory=list)
    feedback: list[Message] = field(default_factory=list)
    mdn: list[Message] = field(default_factory=list)
    originals: list[Message] = field(default_factory=list)  # message/rfc822 or headers
    report_type: str = ""


def classify(raw: bytes, envelope_to: Sequence[str] = ()) -> Report:
    """What the raw message says; never raises (unreadable input is kind "unknown")."""
    try:
        msg = _PARSER.parsebytes(_canonical_boundaries(raw))
    except Exception as exc:  # the stdlib parser is lenient: this is very rare
        return Report(Kind.UNKNOWN, envelope_to=_lower_unique(envelope_to),
                      extra={"error": repr(exc)})
    try:
        return _Classifier(msg, envelope_to).run()
    except Exception as exc:  # hostile or broken input must not stop a feedback batch
        return Report(Kind.UNKNOWN, envelope_to=_lower_unique(envelope_to),
                      message_id=_msgid(header(msg, "message-id")),
                      extra={"error": repr(exc)})


def _lower_unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for value in values:
        value = value.strip().strip("<>").lower()
        if value:
            seen.setdefault(value, None)
    return tuple(seen)


def _msgid(value: str) -> str | None:
    value = collapse(value, 998)
    if not value:
        return None
    match = re.search(r"<([^<>]+)>", value)
    return (match.group(1) if match else value.split()[0]).strip() or None


def _addresses(values: Iterable[object]) -> list[str]:
    """The addresses in header values (display names and comments dropped), lowercased."""
    out = []
    for value in values:
        text = str(value)
        if "@" not in text:
            continue
        if '"' in text or "(" in text:  # quoted names and comments may hold '@': be careful
            out.extend(a.strip().lower() for _n, a in getaddresses([text]) if "@" in a)
        else:
            out.extend(m.group(0).lower() for m in ADDR.finditer(text))
    return out


def _walk(msg: Message, parts: _Parts, depth: int = 0) -> None:
    ctype = msg.get_content_type()
    if depth == 0 and ctype == "multipart/report":
        parts.report_type = (msg.get_param("report-type") or "").lower()
    if msg.is_multipart():
        if ctype in ("message/rfc822", "message/global", "message/partial"):
            payload = msg.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if (isinstance(inner, Message) and inner.get_content_type() == "multipart/report"
                    and not parts.dsn and not parts.feedback and depth < 3):
                # A report forwarded as an attachment (disclaimer gateways, forwarders).
                parts.report_type = parts.report_type or (
                    inner.get_param("report-type") or "").lower()
                _walk(inner, parts, depth + 1)
                return
            parts.originals.append(msg)
            return
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            parts.dsn.append(msg)
            return
        if ctype == "message/feedback-report":
            parts.feedback.append(msg)
            return
        if ctype in ("message/disposition-notification",
                     "message/global-disposition-notification"):
            parts.mdn.append(msg)
            return
        if depth > 8:
            return
        payload = msg.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    _walk(sub, parts, depth + 1)
        return
    if ctype in ("message/delivery-status", "message/global-delivery-status"):
        parts.dsn.append(msg)
    elif ctype == "message/feedback-report":
        parts.feedback.append(msg)
    elif ctype in ("message/disposition-notification",
                   "message/global-disposition-notification"):
        parts.mdn.append(msg)
    elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers",
                   "message/rfc822", "message/global"):
        parts.originals.append(msg)
    elif ctype.partition("/")[0] in ("text", "multipart") or (
            depth == 0 and not ctype.startswith(("image/", "audio/", "video/"))):
        parts.texts.append(msg)  # (a "multipart" leaf lost its boundary: read it as text)


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a DSN / feedback / MDN part, names lowercased."""
    payload = part.get_payload()
    cte = header(part, "content-transfer-encoding").lower().strip()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        blocks = []
        for sub in payload:
            if not isinstance(sub, Message):
                continue
            block: dict[str, str] = {}
            for k, v in sub.items():
                _add_field(block, k.lower(), collapse(unjis(str(v)), 2000))
            body = sub.get_payload()
            if block:
                blocks.append(block)
            if isinstance(body, str) and ":" in body:  # message/global-*: the rest
                blocks.extend(_parse_blocks(body))
        return blocks
    text = "\n\n".join(str(s) for s in payload) if isinstance(payload, list) else part_text(part)
    return _parse_blocks(text)


_LIST_FIELDS = frozenset({"original-rcpt-to", "removal-recipient"})


def _add_field(block: dict[str, str], name: str, value: str) -> None:
    """The first value of a field, except that an ARF report may repeat its recipients."""
    if name not in block:
        block[name] = value
    elif name in _LIST_FIELDS and value:
        block[name] = f"{block[name]}, {value}"


def _parse_blocks(text: str) -> list[dict[str, str]]:
    text = unjis(text)
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current, name = {}, ""
            continue
        if line[0] in " \t" and name:
            current[name] = collapse(current[name] + " " + line, 2000)
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            name = key.strip().lower()
            _add_field(current, name, collapse(value, 2000))
    if current:
        blocks.append(current)
    return blocks


def _headers_of(part: Message) -> Message | None:
    """The header block of a returned original (message/rfc822 or text/rfc822-headers)."""
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
        return None
    text = part_text(part, 64_000)
    if not text.strip():
        return None
    return _HEADER_PARSER.parsestr(text.lstrip(), headersonly=True)


def _strip_type(value: str) -> str:
    """'smtp; 550 ...' -> '550 ...' (the diagnostic type is noise)."""
    if ";" in value[:24]:
        head, _, rest = value.partition(";")
        if " " not in head.strip():
            return rest.strip()
    return value.strip()


class _Headers:
    """The top-level headers, indexed once (Message.get scans every header on each call)."""

    __slots__ = ("_all",)

    def __init__(self, msg: Message) -> None:
        index: dict[str, list[str]] = {}
        for name, value in msg.items():
            index.setdefault(name.lower(), []).append(
                value if isinstance(value, str) else str(value))
        self._all = index

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._all.get(name)
        return values[0] if values else default

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        return self._all.get(name, default)


class _Classifier:
    def __init__(self, msg: Message, envelope_to: Sequence[str]) -> None:
        self.msg = msg
        self.hdr = hdr = _Headers(msg)
        self.parts = _Parts()
        _walk(msg, self.parts)
        addrs = list(envelope_to)
        for name in _ENVELOPE_HEADERS:
            values = hdr.get_all(name) or []
            if values:
                addrs.extend(_addresses(values))
            if name == "delivered-to":
                # Addresses that are surely ours (a recipient is never one of them); the
                # X-Original-To kind may name the failed recipient in re-delivered bounces.
                self.own = set(_lower_unique(addrs))
        self.envelope_to = _lower_unique(addrs)
        self.subject = decode_words(header(hdr, "subject"))
        self.from_raw = decode_words(header(hdr, "from"))
        from_addrs = _addresses([header(hdr, "from")])
        self.from_addr = from_addrs[0] if from_addrs else ""
        self.message_id = _msgid(header(hdr, "message-id"))
        self._text: str | None = None
        self._original: Message | bool | None = False
        self.original_text = ""

    # --- shared pieces -------------------------------------------------------------------
    def text(self) -> str:
        """The human-readable words of the message (first text parts, outside originals)."""
        if self._text is None:
            chunks = []
            plain = [p for p in self.parts.texts if p.get_content_type() == "text/plain"]
            for part in (plain or self.parts.texts)[:3]:
                chunks.append(part_text(part))
            self._text = "\n".join(chunks)[:100_000]
        return self._text

    def original(self) -> Message | None:
        if self._original is False:
            self._original = None
            for part in self.parts.originals:
                headers = _headers_of(part)
                if headers is not None and len(headers):
                    self._original = headers
                    break
        return self._original  # type: ignore[return-value]

    def original_message_id(self) -> str | None:
        orig = self.original()
        if orig is not None:
            mid = _msgid(header(orig, "message-id"))
            if mid:
                return mid
        if self.original_text:
            match = _MSGID.search(self.original_text)
            if match:
                return match.group(1)
        return None

    def original_people(self) -> tuple[list[str], list[str]]:
        """(recipients, senders) named by the returned original's headers."""
        orig = self.original()
        if orig is not None:
            to = _addresses((orig.get_all("to") or []) + (orig.get_all("cc") or []))
            senders = _addresses((orig.get_all("from") or []) + (orig.get_all("sender") or [])
                                 + (orig.get_all("return-path") or [])
                                 + (orig.get_all("reply-to") or []))
            return to, senders
        if self.original_text:
            head = self.original_text[:20_000].split("\n\n", 2)
            block = "\n".join(head[:2])
            to = []
            match = _TO_LINE.search(block)
            if match:
                to = _addresses([match.group(1)])
            senders = _addresses(m.group(1) for m in _FROM_LINE.finditer(block))
            return to, senders
        return [], []

    def report(self, kind: Kind, recipients: Sequence[RecipientResult] = (), *,
               reporter: str | None = None, feedback_type: str | None = None,
               original_message_id: str | None = None, **extra: object) -> Report:
        return Report(kind, tuple(recipients), message_id=self.message_id,
                      original_message_id=original_message_id or self.original_message_id(),
                      envelope_to=self.envelope_to, feedback_type=feedback_type,
                      reporter=reporter or self.from_addr or None,
                      subject=self.subject or None, extra=dict(extra))

    # --- dispatch ------------------------------------------------------------------------
    def run(self) -> Report:
        parts = self.parts
        if parts.feedback or parts.report_type == "feedback-report":
            return self.arf()
        if parts.dsn:
            report = self.dsn()
            if report is not None:
                return report
        if parts.mdn or parts.report_type == "disposition-notification":
            return self.mdn()
        text = self.text()
        if '"notificationType"' in text or '"eventType"' in text or '"Type" : "Notif' in text:
            report = self.ses(text)
            if report is not None:
                return report
        if self.hotmail_complaint():
            return self.complaint_from_original("abuse")
        bounce_from = bool(_BOUNCE_FROM.search(self.from_raw)) or is_system(self.from_addr)
        failed_header = header(self.hdr, "x-failed-recipients")
        null_sender = header(self.hdr, "return-path").strip() in ("<>", "")
        subject_bounce = bool(_BOUNCE_SUBJECT.search(self.subject))
        if failed_header or (bounce_from and (subject_bounce or _BOUNCE_BODY.search(
                text[:8000]) or parts.report_type or _WARNING.search(self.subject))) or (
                parts.report_type == "delivery-status"):
            return self.plain_bounce()
        if any(_UNSUB_TAG.match(a) for a in self.envelope_to) or self.hdr.get(
                "x-apple-unsubscribe") or re.match(r"\s*unsubscribe\b", self.subject, re.I):
            return self.unsubscribe()
        if self.is_autoreply():
            return self.autoreply()
        if subject_bounce and (bounce_from or null_sender or _BOUNCE_BODY.search(text[:8000])):
            return self.plain_bounce()
        if bounce_from and _BOUNCE_BODY.search(text[:8000]):
            return self.plain_bounce()
        if self.asks_unsubscribe():
            return self.unsubscribe()
        replied = bool(_BOUNCE_BODY.search(text[:3000]) and _SMTP_REPLY.search(text[:3000]))
        if (bounce_from or subject_bounce or replied) and (parts.originals or text.strip()):
            report = self.plain_bounce(strict=True)
            if report.recipients:
                return report
        return self.report(Kind.UNKNOWN)

    # --- ARF and provider complaints -----------------------------------------------------
    def arf(self) -> Report:
        fields: dict[str, str] = {}
        for part in self.parts.feedback:
            for block in _field_blocks(part):
                for key, value in block.items():
                    fields.setdefault(key, value)
        ftype = fields.get("feedback-type", "").strip().lower()
        reporter = fields.get("user-agent") or fields.get("reporting-mta") or None
        if reporter and reporter.lower().startswith("dns;"):
            reporter = reporter[4:].strip()
        addrs = _addresses([fields[k] for k in ("original-rcpt-to", "removal-recipient")
                            if k in fields])
        if not addrs:
            addrs = [address_of(fields[k]) for k in ("original-rcpt-to", "removal-recipient")
                     if k in fields]
        if not addrs:
            addrs = self._complainer_from_original()
        if ftype not in _COMPLAINT_TYPES:
            # not-spam, auth-failure (DMARC/DKIM forensic reports): nobody complained.
            return self.report(Kind.UNKNOWN, reporter=reporter or self.from_addr,
                               feedback_type=ftype)
        diag = collapse(f"feedback-type: {ftype or 'abuse'}"
                        + (f"; {fields['user-agent']}" if "user-agent" in fields else ""))
        recipients = [RecipientResult(a, None, FailureClass.COMPLAINT, "complaint", diag)
                      for a in dict.fromkeys(addrs)] or [
            RecipientResult("", None, FailureClass.COMPLAINT, "complaint", diag)]
        return self.report(Kind.COMPLAINT, recipients, reporter=reporter,
                           feedback_type=ftype or "abuse")

    def _complainer_from_original(self) -> list[str]:
        orig = self.original()
        if orig is not None:
            for name in ("x-hmxmroriginalrecipient", "x-original-to", "delivered-to"):
                values = orig.get_all(name)
                if values:
                    found = _addresses(values)
                    if found:
                        return found[:1]
            to = _addresses(orig.get_all("to") or [])
            if to:
                return to[:1]
        found = _addresses(self.hdr.get_all("x-hmxmroriginalrecipient") or [])
        return found[:1]

    def hotmail_complaint(self) -> bool:
        if not self.parts.originals:
            return False
        if re.search(r"complaint about message|abuse report", self.subject, re.I):
            return True
        orig = self.original()
        return orig is not None and bool(orig.get("x-hmxmroriginalrecipient")) and bool(
            re.search(r"hotmail|outlook|msn|live\.com", self.from_addr))

    def complaint_from_original(self, ftype: str) -> Report:
        addrs = self._complainer_from_original()
        diag = f"feedback-type: {ftype}"
        recipients = [RecipientResult(a, None, FailureClass.COMPLAINT, "complaint", diag)
                      for a in addrs] or [
            RecipientResult("", None, FailureClass.COMPLAINT, "complaint", diag)]
        return self.report(Kind.COMPLAINT, recipients, feedback_type=ftype)

    # --- Amazon SES notifications sent as mail ------------------------------------------
    def ses(self, text: str) -> Report | None:
        start = text.find("{")
        if start < 0:
            return None
        try:
            # strict=False: a relay may have folded a long line inside a JSON string
            data = json.loads(text[start:text.rfind("}") + 1], strict=False)
        except ValueError:
            return None
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            try:
                data = json.loads(data["Message"], strict=False)
            except ValueError:
                return None
        if not isinstance(data, dict):
            return None
        kind = str(data.get("notificationType") or data.get("eventType") or "").lower()
        mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
        mid = mail.get("messageId") if isinstance(mail, dict) else None
        headers = mail.get("headers") if isinstance(mail, dict) else None
        if isinstance(headers, list):
            for h in headers:
                if isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id":
                    mid = _msgid(str(h.get("value", ""))) or mid
        if kind == "complaint":
            info = data.get("complaint") or {}
            ftype = str(info.get("complaintFeedbackType") or "abuse").lower()
            recipients = [RecipientResult(str(r.get("emailAddress", "")).lower(), None,
                                          FailureClass.COMPLAINT, "complaint",
                                          f"feedback-type: {ftype}")
                          for r in info.get("complainedRecipients") or [] if isinstance(r, dict)]
            return self.report(Kind.COMPLAINT, recipients, reporter="amazonses.com",
                               feedback_type=ftype, original_message_id=mid)
        if kind == "bounce":
            info = data.get("bounce") or {}
            btype = str(info.get("bounceType", "")).lower()
            sub = str(info.get("bounceSubType", "")).lower()
            out = []
            for r in info.get("bouncedRecipients") or []:
                if not isinstance(r, dict):
                    continue
                diag = collapse(str(r.get("diagnosticCode") or f"{btype} {sub}"))
                status = r.get("status") or enhanced_status(diag)
                status = str(status) if status else None
                reason, klass = reason_for(diag, status, basic_code(diag))
                if sub == "mailboxfull":
                    reason, klass = "mailbox_full", FailureClass.SOFT
                elif sub in ("messagetoolarge", "contentrejected", "attachmentrejected"):
                    reason, klass = "message_invalid", FailureClass.IGNORED
                elif sub in ("suppressed", "onaccountsuppressionlist", "noemail"):
                    reason, klass = "user_unknown", FailureClass.HARD
                if btype == "transient" and klass is FailureClass.HARD:
                    klass = FailureClass.SOFT
                out.append(RecipientResult(str(r.get("emailAddress", "")).lower(), status,
                                           klass, reason, diag, "failed"))
            return self.report(Kind.BOUNCE, out, reporter="amazonses.com",
                               original_message_id=mid)
        if kind == "delivery":
            info = data.get("delivery") or {}
            out = [RecipientResult(str(a).lower(), "2.0.0", FailureClass.IGNORED, "not_defined",
                                   collapse(str(info.get("smtpResponse", ""))), "delivered")
                   for a in info.get("recipients") or []]
            return self.report(Kind.DELIVERED, out, reporter="amazonses.com",
                               original_message_id=mid)
        return None

    # --- RFC 3464 delivery status notifications -------------------------------------------
    def dsn(self, blocks: list[dict[str, str]] | None = None) -> Report | None:
        if blocks is None:
            blocks = []
            for part in self.parts.dsn:
                blocks.extend(_field_blocks(part))
        if not blocks:
            return None
        per_message = blocks[0] if not _is_recipient_block(blocks[0]) else {}
        rcpt_blocks = [b for b in blocks if _is_recipient_block(b)]
        reporter = (per_message.get("reporting-mta") or per_message.get("received-from-mta")
                    or (rcpt_blocks[0].get("reporting-mta") if rcpt_blocks else None))
        reporter = _strip_type(reporter) if reporter else None
        if not rcpt_blocks:
            return None
        text = self.text()
        human, self.original_text = split_original(text)
        failed_hdr = _addresses(self.hdr.get_all("x-failed-recipients") or [])
        results: list[RecipientResult] = []
        seen: set[tuple[str, str]] = set()
        for block in rcpt_blocks:
            addr = address_of(block.get("final-recipient", ""))
            if not _good_address(addr):
                for name in ("original-recipient", "x-actual-recipient"):
                    other = address_of(block.get(name, ""))
                    if _good_address(other):
                        addr = other
                        break
                else:
                    if len(failed_hdr) == 1:
                        addr = failed_hdr[0]
                    else:
                        named = self._named_in(human)
                        if len(named) == 1:
                            addr = named[0]
                        elif not _good_address(addr):
                            addr = "" if addr in ("unknown", "") or "@" not in addr else addr
            action = block.get("action", "").split()[0].lower() if block.get("action") else ""
            status_match = _STATUS_FIELD.search(block.get("status", ""))
            status = ".".join(status_match.groups()) if status_match else None
            diag = _strip_type(block.get("diagnostic-code", ""))
            if not diag and block.get("x-postfix-diagnostic"):
                diag = block["x-postfix-diagnostic"]
            if not diag and status_match and len(block.get("status", "")) > 8:
                diag = block["status"]  # "5.0.0 (recipient reached disk quota)"
            diag_status = enhanced_status(diag)
            if diag_status and (status is None or status in _GENERIC_STATUS):
                status = diag_status
            if not action:
                action = _infer_action(status, self.subject, human)
            result = self._dsn_recipient(addr, action, status, diag, human)
            key = (result.address, result.action or "")
            if key in seen and result.address:
                continue
            seen.add(key)
            results.append(result)
        failed = [r for r in results if r.action == "failed"]
        kind = Kind.BOUNCE if failed else Kind.DELIVERED
        return self.report(kind, results, reporter=reporter)

    def _dsn_recipient(self, addr: str, action: str, status: str | None, diag: str,
                       human: str) -> RecipientResult:
        context = ""
        if not diag or (status in _GENERIC_STATUS or status is None):
            window = _window_for(human, addr)
            context = collapse(window, 4000)
            if not diag:
                diag = _reply_line(human[:8000], addr) or _reply_line(window, "")
        code = basic_code(diag)
        reason, klass = reason_for(diag, status, code, context)
        if reason == "user_unknown" and _after_data(human, status):
            reason, klass = "refused", FailureClass.SOFT
        if klass is FailureClass.HARD and self._sender_side(
                diag, addr, _window_for(human, addr) if addr else ""):
            reason, klass = "refused", FailureClass.SOFT
        shown = collapse(diag) or (best_line(context, addr) if context else "")
        if action in ("delayed",):
            klass = FailureClass.IGNORED
            if reason in ("user_unknown", "invalid_domain", "not_defined"):
                reason = "unreachable"
        elif action in ("delivered", "relayed", "expanded", "deliverable") or (
                status or "").startswith("2."):
            reason, klass = "not_defined", FailureClass.IGNORED
            action = "delivered" if action in ("deliverable", "failed", "") else action
        else:
            action = "failed"
        return RecipientResult(addr, status, klass, reason, shown, action)

    def _sender_side(self, diag: str, addr: str, window: str) -> bool:
        """Whether a permanent failure is about our side, not the recipient's mailbox: the
        server refused the sender (answered MAIL FROM, "sender was rejected"), or the reply
        names our sender address and not the recipient ("550 5.2.0 <us@...> From: Domain is
        invalid")."""
        if window and _AT_MAIL_FROM.search(window[:3000]):
            return True
        named = {a.lower() for a in _BRACKETED.findall(diag[:1000])}
        if not named or (addr and addr.lower() in named):
            return False
        _to, senders = self.original_people()
        ours = self.own | {a.lower() for a in senders}
        return bool(named & ours)

    def _named_in(self, human: str) -> list[str]:
        """Recipients named in a report's human-readable words."""
        _to, senders = self.original_people()
        exclude = self.own | set(senders) | {self.from_addr}
        return [a for a, _w in find_recipients(human[:20_000], exclude)]

    # --- read receipts --------------------------------------------------------------------
    def mdn(self) -> Report:
        fields: dict[str, str] = {}
        for part in self.parts.mdn:
            for block in _field_blocks(part):
                for key, value in block.items():
                    fields.setdefault(key, value)
        addr = address_of(fields.get("final-recipient", "")) or self.from_addr
        disposition = collapse(fields.get("disposition", ""))
        result = RecipientResult(addr, None, FailureClass.IGNORED, "not_defined",
                                 collapse(f"disposition: {disposition}"), "delivered")
        mid = _msgid(fields.get("original-message-id", ""))
        return self.report(Kind.DELIVERED, [result], original_message_id=mid)

    # --- non-standard bounces -------------------------------------------------------------
    def plain_bounce(self, strict: bool = False) -> Report:
        text = self.text()
        bounce_text, self.original_text = split_original(text)
        inline = _INLINE_DSN.search(bounce_text)
        if inline:  # DSN fields pasted into the text ("Technical report:")
            start = bounce_text.rfind("\n\n", 0, inline.start()) + 1
            blocks = [b for b in _parse_blocks(bounce_text[start:]) if len(b) >= 2]
            report = self.dsn(blocks)
            if report is not None and any(r.address for r in report.recipients):
                return report
        bounce_text = bounce_text[:30_000]
        to, senders = self.original_people()
        exclude = self.own | set(senders)
        if self.from_addr:
            exclude.add(self.from_addr)
        for name in ("reply-to", "sender", "return-path", "errors-to"):
            exclude.update(_addresses(self.hdr.get_all(name) or []))
        mids = {m for m in (self.message_id, self.original_message_id()) if m}
        exclude.update(m.lower() for m in mids)
        failed_hdr = _addresses(self.hdr.get_all("x-failed-recipients") or [])
        found = find_recipients(bounce_text, exclude)
        if not found and not failed_hdr:
            # The sender's own address may be the recipient too (tests, redacted samples):
            # accept it where an SMTP reply names it.
            found = [(a, w) for a, w in find_recipients(bounce_text, self.own | {
                self.from_addr}) if _SMTP_REPLY.search(w)]
        if failed_hdr:
            windows = dict(found)
            found = [(a, windows.get(a) or _window_for(bounce_text, a)) for a in failed_hdr]
        elif not found and not strict:
            found = [(a, _window_for(bounce_text, a)) for a in self._fallback_addresses(to)]
        if strict and not found:
            return self.report(Kind.UNKNOWN)
        head = bounce_text[:2500]
        warning = bool(_WARNING.search(self.subject) or _WARNING.search(head)) and not (
            _PERMANENT.search(self.subject) or _PERMANENT.search(head))
        results = []
        whole = bounce_text
        for addr, window in found or [("", "")]:
            results.append(self._text_recipient(addr, window, whole, warning))
        failed = [r for r in results if r.action == "failed"]
        kind = Kind.BOUNCE if failed or not results else Kind.DELIVERED
        return self.report(kind, results)

    def _fallback_addresses(self, original_to: list[str]) -> list[str]:
        """Recipients when the words named none: the returned original's To when it names
        one address (the recipient of a mail we sent), else flufl.bounce's detectors."""
        original_to = [a for a in original_to if a not in self.own]
        if len(original_to) == 1:
            return original_to
        found = [a for a in _flufl_addresses(self.msg) if "@" in a and not is_system(a)]
        return found

    def _text_recipient(self, addr: str, window: str, whole: str,
                        warning: bool) -> RecipientResult:
        diag_text = collapse(window or whole[:3000], 3000)
        status = enhanced_status(diag_text)
        code = basic_code(diag_text)
        context = collapse(whole[:3000], 3000) if whole and window else ""
        reason, klass = reason_for(diag_text, status, code, context)
        if status is None and klass is FailureClass.HARD and _transient_words(diag_text):
            klass = FailureClass.SOFT
        if reason == "user_unknown" and _after_data(window or whole, status):
            reason, klass = "refused", FailureClass.SOFT
        if klass is FailureClass.HARD and self._sender_side(diag_text, addr, window):
            reason, klass = "refused", FailureClass.SOFT
        shown = best_line(window or whole[:4000], addr)
        if whole and window and not _SMTP_REPLY.search(window):
            shown = best_line(whole[:4000], addr)
        if warning and klass is not FailureClass.HARD:
            if reason in ("user_unknown", "invalid_domain", "not_defined"):
                reason = "unreachable"
            return RecipientResult(addr, status, FailureClass.IGNORED, reason, shown, "delayed")
        return RecipientResult(addr, status, klass, reason, shown, "failed")

    # --- auto-replies and unsubscribe mail ------------------------------------------------
    def is_autoreply(self) -> bool:
        msg = self.hdr
        auto = header(msg, "auto-submitted").strip().lower()
        if auto.startswith("auto-replied"):
            return True
        if msg.get("x-autoreply") or msg.get("x-autorespond") or msg.get("x-autoresponder"):
            return True
        if header(msg, "precedence").strip().lower() in ("auto_reply", "auto-reply"):
            return True
        if msg.get("x-auto-response-suppress") and _AUTO_SUBJECT.search(self.subject):
            return True
        if re.search(r"vacation|autorespond|autoreply", header(msg, "x-mailer"), re.I):
            return True
        if _AUTO_SUBJECT.search(self.subject):
            return True
        if auto.startswith("auto-generated") or header(msg, "precedence").lower().strip() in (
                "bulk", "junk"):
            return bool(_AUTO_BODY.search(self.text()[:3000]))
        return False

    def autoreply(self) -> Report:
        who = self.from_addr
        result = RecipientResult(who, None, FailureClass.IGNORED, "autoreply",
                                 collapse(self.subject or "auto-reply"))
        orig = _msgid(header(self.hdr, "in-reply-to")) or _first_reference(
            header(self.hdr, "references"))
        return self.report(Kind.AUTOREPLY, [result], original_message_id=orig)

    def asks_unsubscribe(self) -> bool:
        if _UNSUB_WORDS.search(self.subject):
            return True
        body = self.text()[:20_000]
        quote = _QUOTE_START.search(body)
        own = body[:quote.start()] if quote else body
        return bool(_UNSUB_WORDS.search(own[:2000]))

    def unsubscribe(self) -> Report:
        results = []
        if self.from_addr:
            results.append(RecipientResult(self.from_addr, None, FailureClass.IGNORED,
                                           "not_defined", collapse(self.subject or "")))
        orig = _msgid(header(self.hdr, "in-reply-to")) or _first_reference(
            header(self.hdr, "references"))
        return self.report(Kind.UNSUBSCRIBE, results, original_message_id=orig)


def _flufl_addresses(msg: Message) -> list[str]:
    """flufl.bounce's detectors, each on its own (one that trips on an odd message must not
    hide the others, nor log a traceback): temporary and permanent failures, lowercased."""
    try:
        from flufl.bounce._scan import _DETECTORS as detectors
    except ImportError:  # pragma: no cover - a flufl.bounce without the private list
        from flufl.bounce import all_failures

        try:
            temporary, permanent = all_failures(msg)
        except Exception:
            return []
        return list(dict.fromkeys(a.decode("utf-8", "replace").lower()
                                  for a in (*permanent, *temporary)))
    for detector in detectors:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:
            continue
        if temporary or permanent:
            return list(dict.fromkeys(
                (a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).lower()
                for a in (*permanent, *temporary)))
    return []


def _first_reference(value: str) -> str | None:
    ids = re.findall(r"<([^<>]+)>", value)
    return ids[-1] if ids else None


_GOOD_ADDRESS = re.compile(r"[^@\s]+@[\w-]+(?:\.[\w-]+)*\.[a-z][\w-]*", re.I)


def _good_address(addr: str) -> bool:
    return bool(_GOOD_ADDRESS.fullmatch(addr))


def _is_recipient_block(block: dict[str, str]) -> bool:
    return ("final-recipient" in block or "original-recipient" in block
            or ("action" in block and "status" in block))


def _infer_action(status: str | None, subject: str, human: str) -> str:
    if status and status.startswith("2."):
        return "delivered"
    if status and status.startswith("5."):
        return "failed"
    if _WARNING.search(subject) or (_WARNING.search(human[:3000]) and not _PERMANENT.search(
            human[:3000])):
        return "delayed"
    return "failed"


# "User unknown" answered to DATA, after the server accepted the recipient at RCPT TO: the
# mailbox exists and a filter speaks (NTT docomo answers so for its reception filters).
_AFTER_DATA = re.compile(
    r">>> data\s*\n\s*<<<\s*5\d\d[^\n]*|[^\n]*\(in reply to end of data command\)|"
    r"[^\n]*after end of data[^\n]*", re.I)


# A permanent reply to MAIL FROM (Exim "after MAIL FROM", Postfix "in reply to MAIL FROM
# command", a Sendmail transcript, qmail "sender was rejected"): the recipient was never judged.
_AT_MAIL_FROM = re.compile(
    r"after mail from\b|in reply to mail from command|>>> mail from:[^\n]*\n\s*<<<\s*5\d\d|"
    r"but sender was rejected", re.I)
_BRACKETED = re.compile(r"<([^<>\s@]+@[^<>\s@]+\.[^<>\s@]+)>")
# Sendmail's own verdict after a pipelined RCPT answer ("550 5.1.1 <x@y>... User unknown").
_SENDMAIL_RCPT_VERDICT = re.compile(r"^\d{3} 5\.1\.1 <[^>]*>\.\.\. user unknown", re.I | re.M)


def _after_data(text: str, status: str | None) -> bool:
    """Whether a "user unknown" came in reply to DATA (not a pipelined RCPT answer: those
    carry X.1.x codes, and Sendmail then says "Need RCPT")."""
    if not text or (status or "").startswith(("5.1.", "4.1.")):
        return False
    low = text.lower()
    if "data" not in low or "need rcpt" in low or "no valid recipients" in low:
        return False
    if _SENDMAIL_RCPT_VERDICT.search(text[:20_000]):
        return False
    for match in _AFTER_DATA.finditer(text[:20_000]):
        if re.search(r"unknown|no such|not exist|invalid", match.group(0), re.I):
            return True
    return False


_TRANSIENT_WORDS = re.compile(r"temporar|try again|will (?:retry|try)|deferred|\b4\d\d\b", re.I)


def _transient_words(text: str) -> bool:
    return bool(_TRANSIENT_WORDS.search(text)) and not re.search(r"\b5\d\d\b", text)


_REPLY = re.compile(r"^.*(?:\b[45]\d\d[ -]|\b[45]\.\d{1,3}\.\d{1,3}\b).*$", re.M)


def _reply_line(window: str, addr: str) -> str:
    """An SMTP reply quoted in the human-readable part for this recipient, if any."""
    if addr and addr.lower() not in window.lower():
        return ""
    for match in _REPLY.finditer(window):
        line = match.group(0)
        if (addr.lower() in line.lower()) if addr else len(line) < 200:
            return collapse(line)
    return ""


def _window_for(text: str, addr: str) -> str:
    """The lines around `addr` in `text` (the whole beginning when it is not there)."""
    if not text:
        return ""
    if addr:
        at = text.lower().find(addr.lower())
        if at >= 0:
            start = text.rfind("\n", 0, max(0, at - 200)) + 1
            return text[start:at + len(addr) + 600]
    return text[:2000]
