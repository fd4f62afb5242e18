"""Text helpers for the feedback classifier: decoding parts, finding the returned message in a
plain-text bounce, and reading recipients with their diagnostics out of the human-readable words
that non-standard MTAs send (Postfix, Exim, Sendmail, qmail, Exchange, Domino, GroupWise, ...).
Pure functions on strings; compiled once at import."""

from __future__ import annotations

import html
import re
from email.header import decode_header
from email.message import Message
from typing import Any

# An address as bounces write it (no quoted local parts, no IP literals: rare in bounces).
ADDR = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z][\w-]*")
_SPACE = re.compile(r"\s+")

# Where the copy of the original message starts in a plain-text bounce.
_CUT = re.compile(
    r"^[ \t>|]*(?:"
    # decorated separators: "------ This is a copy of the message ------", "=== Original ==="
    r"(?:-{2,}|={2,}|\*{2,}|_{3,})[ \t]*[^\n]{0,40}(?:(?:original|returned|rejected|"
    r"undelivered|unsent|bounced)(?: e-?mail| mail| message| headers?| text|[ \t]*-|[ \t]*=|"
    r"[ \t]*$)|copy of|message (?:header|text|follows|body)|headers? (?:of|follow)|"
    r"ursprüngliche|d'origine|originale)[^\n]*"
    # plain sentences that announce the copy
    r"|(?:this is a|below this line is a|here is a|a) copy of[^\n]*"
    r"|(?:the )?(?:original|returned|unsent|undelivered) (?:message|mail|e-?mail)(?: headers?)?"
    r"(?: follows| below| text| as received| is attached)?[ \t]*[:.]?"
    r"|(?:the )?headers? of (?:the |your )?(?:original|returned) (?:message|mail)[^\n]*"
    r"|(?:message (?:text )?(?:header )?follows|unsent message below|included message)[^\n]*"
    r"|content-type: message/rfc822[^\n]*"
    r")[ \t]*$|^(?:received|return-path|dkim-signature|x-received|arc-seal): ",
    re.I | re.M)

_TAG = re.compile(r"<[^>]*>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|p|div|tr|li)\b[^>]*>", re.I)
_SCRIPT = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)


def collapse(text: str, limit: int = 300) -> str:
    """One line, whitespace collapsed, at most `limit` characters."""
    return _SPACE.sub(" ", text).strip()[:limit]


def unjis(text: str) -> str:
    """Undeclared ISO-2022-JP in a header field or DSN field (raw escape sequences, as
    Japanese MTAs write them) as text; anything else unchanged."""
    if "\x1b$" not in text:
        return text
    try:
        return text.encode("latin-1").decode("iso-2022-jp")
    except (UnicodeError, LookupError):
        return text


def decode_words(value: str | None) -> str:
    """An RFC 2047 header value as text (never raises)."""
    if not value:
        return ""
    value = str(value)
    if "=?" not in value:
        return collapse(value, 1000)
    try:
        out = []
        for chunk, charset in decode_header(value):
            if isinstance(chunk, bytes):
                try:
                    out.append(chunk.decode(charset or "ascii", "replace"))
                except LookupError:
                    out.append(chunk.decode("latin-1"))
            else:
                out.append(chunk)
        return collapse("".join(out), 1000)
    except Exception:  # a broken encoded word: keep it raw
        return collapse(value, 1000)


def header(msg: Message | Any, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def part_text(part: Message, limit: int = 200_000) -> str:
    """The decoded text of a leaf part (HTML reduced to its words)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        if not isinstance(raw, str):
            return ""
        text = raw
    else:
        payload = payload[:limit]
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, "replace")
        except (LookupError, TypeError):
            text = payload.decode("latin-1")
    if "html" in (part.get("content-type") or "").lower():
        text = html_words(text)
    return text


def html_words(text: str) -> str:
    text = _SCRIPT.sub(" ", text)
    text = _BLOCK_TAG.sub("\n", text)
    return html.unescape(_TAG.sub("", text))


def split_original(text: str) -> tuple[str, str]:
    """(the bounce's own words, the returned message) of a plain-text bounce."""
    match = _CUT.search(text, 40 if len(text) > 40 else 0)
    if match is None:
        return text, ""
    return text[:match.start()], text[match.start():]


_HEADER_LINE = re.compile(
    r"^[\s*>•-]*(?:from|sender|reply-to|return-path|received|message-id|in-reply-to|references|"
    r"to|cc|bcc|subject|sent|date|von|an|envoy[ée]|objet|de|para|asunto|"
    r"x-[\w-]+|dkim-signature|list-[\w-]+|reporting-mta|arrival-date|content-[\w-]+)\s*:",
    re.I)
_WEAK_BEFORE = re.compile(r"(?:[=/]|mailto:|\bfrom:?\s*<?|\bsender:?\s*<?|\bby\s+<?)$",
                          re.I)
_PREFIX = re.compile(r"^(?:smtp|rfc822|x400|ex)[=:]", re.I)
# An address in a recipient-like position: <addr>, "addr:", RCPT TO:<addr>, alone on its line,
# "addr on <date>", "addr (reason)", "addr ... User unknown" (Sendmail).
_STRONG_AFTER = re.compile(r"^(?:>|\s*$|:|\.\.\.|\s+on\s|\s*\(|\s*[-,;]|\s*\[|\s+\w+\s*:)")
_STRONG_BEFORE = re.compile(
    r"(?:<|\bto:?\s*<?|\brcpt to:\s*<?|\brecipient:?\s*<?|\baddress:?\s*<?|\buser\s+<?|"
    r"\baddressee:?\s*<?|^\s*[\"']?|delivered to:?\s*<?|\bfor\s+<?|\bmailbox\s+<?)$", re.I)


def _local(addr: str) -> str:
    return addr.rsplit("@", 1)[0]


_SYSTEM_LOCAL = re.compile(
    r"^(?:post[-_]?master|mailer[-_]?daemon|mail[-_]?daemon|mailerdaemon|mdaemon|"
    r"noreply|no-reply|do-not-reply|donotreply|abuse|hostmaster|root|nobody)$|"
    r"^[bu]-\d+-\d+-[0-9a-f]{20}$", re.I)


def is_system(addr: str) -> bool:
    return bool(_SYSTEM_LOCAL.match(_local(addr)))


def find_recipients(text: str, exclude: set[str]) -> list[tuple[str, str]]:
    """(address, its window of text) for every recipient-like address in a bounce's words,
    in order of appearance; strong positions only when there are some."""
    lines = text.splitlines()
    found: dict[str, tuple[int, bool]] = {}
    for i, line in enumerate(lines):
        if "@" not in line or _HEADER_LINE.match(line):
            continue
        for m in ADDR.finditer(line):
            addr = _PREFIX.sub("", m.group(0).strip(".'\"-"))
            key = addr.lower()
            if key in exclude or is_system(addr) or "@" not in addr:
                continue
            before = line[:m.start()]
            if _WEAK_BEFORE.search(before):
                continue
            strong = bool(_STRONG_BEFORE.search(before[-24:]) or
                          _STRONG_AFTER.match(line[m.end():]))
            if key in found:
                if strong and not found[key][1]:
                    found[key] = (found[key][0], True)
                continue
            found[key] = (i, strong)
    if not found:
        return []
    chosen = [(k, v) for k, v in found.items() if v[1]] or list(found.items())
    starts = sorted({v[0] for v in found.values()})
    out = []
    for key, (i, _strong) in sorted(chosen, key=lambda kv: kv[1][0]):
        nxt = next((s for s in starts if s > i), len(lines))
        end = min(nxt, i + 10, len(lines))
        start = i
        if end - i < 3:  # a list of addresses: add the words just before, never a neighbour
            while start > 0 and i - start < 2 and (start - 1) not in starts:
                start -= 1
        window = "\n".join(lines[start:end])
        out.append((key, window))
    return out


_INFORMATIVE = re.compile(r"\b[245]\d\d\b|\b[245]\.\d{1,3}\.\d{1,3}\b|#\s?[45]\.|"
                          r"unknown|not found|does not exist|full|quota|reject|denied|"
                          r"invalid|disabled|blocked|spam|error|fail|refused|timed? ?out|"
                          r"unable|no such|unavailable|exist|expired|too large|size",
                          re.I)


_REPLY_LINE = re.compile(r"(?:^|[\s:(\[\"'])[45]\d\d[\s-]|#\s?[45]\.\d|\b[45]\.\d{1,3}\.\d{1,3}\b")


def best_line(window: str, address: str = "") -> str:
    """The most telling part of a recipient's window, as one line: from its first SMTP reply
    (else its first informative line) to the end of that paragraph."""
    lines = [ln.strip() for ln in window.splitlines()]
    first = next((i for i, ln in enumerate(lines) if ln and _REPLY_LINE.search(ln)), None)
    if first is None:
        first = next((i for i, ln in enumerate(lines) if ln and _INFORMATIVE.search(ln)), None)
    if first is None:
        text = collapse(" ".join(ln for ln in lines if ln))
    else:
        end = first + 1
        while end < len(lines) and lines[end] and end - first < 6:
            end += 1
        text = collapse(" ".join(lines[first:end]))
    return text or collapse(address)


def address_of(value: str) -> str:
    """The bare address of a DSN recipient field ("rfc822; <a@b>") or a header value."""
    value = value.strip()
    if ";" in value:
        value = value.split(";", 1)[1]
    match = ADDR.search(value)
    if match:
        return _PREFIX.sub("", match.group(0).strip(".'\"")).lower()
    return collapse(value.strip().strip("<>\"' "), 200).lower()
