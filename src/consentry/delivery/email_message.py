"""Building the RFC 5322 bytes of one marketing email, and signing them with DKIM.

Speed matters here (one message per recipient): `email.message.EmailMessage` with the SMTP
policy costs 3-5 ms a message on the reference machine (its header registry re-creates a
class for every header it parses, and the generator re-folds every header), which alone would
cap a sender near 250 messages/s. So the stdlib email package builds what is the same for
every message of a sender once (the From header, with its display name encoded), and the
per-message part is assembled directly, using the stdlib's C helpers: `binascii.b2a_qp` for
quoted-printable bodies, base64 for RFC 2047 encoded words. About 80 µs a message.

What comes out:
- From, To, Subject, Date, Message-ID, the Outgoing's extra headers (List-Unsubscribe,
  List-Unsubscribe-Post, List-Id...) in their order, MIME-Version, Content-Type;
- multipart/alternative (text, then HTML) or a single text/plain part, UTF-8,
  quoted-printable: 7-bit clean, so no relay re-encodes it and breaks a DKIM body hash;
- a non-ASCII subject or header value as RFC 2047 encoded words; a non-ASCII local part of
  an address stays UTF-8 (RFC 6532), and such a message must be sent with SMTPUTF8
  (`needs_smtputf8`); a non-ASCII domain is IDNA-encoded;
- CRLF line endings throughout, lines within 78 characters where there is whitespace to fold
  at (header folding only inserts CRLF before existing whitespace, so unfolding gives the
  value back verbatim).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Iterable, Mapping
from email import policy as email_policy
from email.utils import formatdate, parseaddr
from functools import lru_cache
from pathlib import Path
from uuid import uuid4

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from consentry.delivery.transport import Outgoing
from consentry.domain.errors import ConsentryError
from consentry.settings import SendingSettings

__all__ = ["DkimSigner", "MessageBuilder", "MessageError", "build_message", "needs_smtputf8"]

_CRLF = "\r\n"
_MAX_LINE = 78
# Headers this module writes itself; an Outgoing may not bring its own copy of them.
_OWN_HEADERS = frozenset({"from", "to", "subject", "date", "message-id", "mime-version",
                          "content-type", "content-transfer-encoding", "dkim-signature"})
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII without ":" (RFC 5322 ftext)
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
_QUOTED_PHRASE = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*(<[^<>]*>)\s*')
_FOLD_TOKENS = re.compile(r"[ \t]*[^ \t]+|[ \t]+$")
_ENCODED_WORD_BYTES = 39  # 52 base64 characters: "Subject: =?utf-8?b?...?=" stays within 78


class MessageError(ValueError):
    """An Outgoing that cannot be turned into a valid message (a header with a line break,
    a non-ASCII URL...). The transport turns it into a failed outcome for that message."""


def needs_smtputf8(*addresses: str | None) -> bool:
    """Whether an envelope with these addresses needs the SMTPUTF8 extension (RFC 6531): a
    non-ASCII local part. (A non-ASCII domain is IDNA-encoded instead.)"""
    return any(a is not None and not _ascii_address(a).isascii() for a in addresses)


def _ascii_address(address: str) -> str:
    """The address with an internationalized domain IDNA-encoded (the local part as is)."""
    if address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address  # left as UTF-8: only sendable with SMTPUTF8


def _check_address(address: str, what: str) -> str:
    if not address or _FORBIDDEN_IN_VALUE.search(address) or "@" not in address or any(
            c in address for c in "<> ,;"):
        raise MessageError(f"{what} {address!r} is not an address")
    return _ascii_address(address)


def encode_words(text: str) -> list[str]:
    """RFC 2047 base64 encoded words for `text`, each at most 39 UTF-8 bytes (never splitting
    a character), to be joined by folding whitespace."""
    data = text.encode("utf-8")
    words: list[str] = []
    start, end = 0, len(data)
    while start < end:
        stop = min(start + _ENCODED_WORD_BYTES, end)
        while stop < end and (data[stop] & 0xC0) == 0x80:  # a UTF-8 continuation byte
            stop -= 1
        words.append("=?utf-8?b?" + base64.b64encode(data[start:stop]).decode("ascii") + "?=")
        start = stop
    return words


def fold(name: str, value: str) -> str:
    """`Name: value`, folded before whitespace so that lines stay within 78 characters where
    the value allows it. Unfolding gives the value back unchanged."""
    line = f"{name}: {value}"
    if len(line) <= _MAX_LINE:
        return line
    tokens = _FOLD_TOKENS.findall(value)
    if not tokens:
        return line
    lines: list[str] = []
    current = f"{name}: {tokens[0]}"
    for token in tokens[1:]:
        if len(current) + len(token) > _MAX_LINE and token.strip():
            lines.append(current)
            current = token
        else:
            current += token
    lines.append(current)
    return _CRLF.join(lines)


def _unstructured(name: str, value: str) -> str:
    """An unstructured header (Subject...): ASCII as is, else encoded words."""
    if value.isascii():
        return fold(name, value)
    return f"{name}: " + (_CRLF + " ").join(encode_words(value))


def _extra_header(name: str, value: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise MessageError(f"invalid header name {name!r}")
    if name.lower() in _OWN_HEADERS:
        raise MessageError(f"header {name} is set by the transport, not by the message")
    if _FORBIDDEN_IN_VALUE.search(value):
        raise MessageError(f"header {name} contains a line break")
    if value.isascii():
        return fold(name, value)
    lowered = name.lower()
    if lowered.startswith("list-") and lowered != "list-id":
        raise MessageError(f"header {name} must be ASCII (percent-encode its URLs)")
    phrase = _QUOTED_PHRASE.fullmatch(value)
    if phrase:  # '"Label" <id>' (List-Id): encoded words may not stand inside quotes
        label = re.sub(r"\\(.)", r"\1", phrase.group(1))
        return fold(name, " ".join([*encode_words(label), phrase.group(2)]))
    return _unstructured(name, value)


def _qp(text: str) -> str:
    """Text as quoted-printable with CRLF line ends (the stdlib's C encoder)."""
    if "\r" in text:
        text = _LINE_BREAKS.sub("\n", text)
    data = text.replace("\n", "\r\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).decode("ascii")


def _format_from(email_from: str) -> tuple[str, str]:
    """(the From header line, the bare address) for a configured sender, through the email
    package's header registry: quoting and encoding of the display name are its business."""
    name, address = parseaddr(email_from)
    if not address or "@" not in address or _FORBIDDEN_IN_VALUE.search(email_from):
        raise ConsentryError(f"email_from {email_from!r} is not an address "
                             "(expected 'Name <user@example.com>' or 'user@example.com')")
    address = _ascii_address(address)
    pol = email_policy.SMTPUTF8 if not address.isascii() else email_policy.SMTP
    header = pol.header_factory("From", f"{name} <{address}>" if name else address)
    if getattr(header, "defects", None):
        raise ConsentryError(f"email_from {email_from!r} is not a valid address: "
                             f"{header.defects[0]}")
    return pol.fold("From", header).rstrip("\r\n"), address


class _Clock:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._value = formatdate(now, localtime=False).replace("-0000", "+0000")
            self._second = now
        return self._value


_clock = _Clock()


class DkimSigner:
    """DKIM signatures (RFC 6376, rsa-sha256, relaxed/relaxed) made with dkimpy.

    Every header the builder writes is signed, List-Unsubscribe and List-Unsubscribe-Post
    included (RFC 8058 requires it); From, To, Subject, the List-Unsubscribe pair, MIME-Version
    and Content-Type are over-signed (listed once more than they occur), so a header of that
    name added on the way invalidates the signature instead of being shown to the reader.

    Cost: dkimpy does RSA in pure Python: about 15 ms a message with a 2048-bit key and 3 ms
    with a 1024-bit one on the reference machine, which then bounds what a sender can do.
    """

    _OVERSIGN = ("from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post",
                 "mime-version", "content-type")
    _NEVER_SIGN = frozenset({"return-path", "received", "comments", "keywords", "bcc",
                             "resent-bcc", "dkim-signature"})

    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        if not selector or not domain:
            raise ConsentryError("DKIM needs a selector and a domain")
        try:
            parse_pem_private_key(private_key)
        except (UnparsableKeyError, ValueError, TypeError, IndexError) as exc:
            raise ConsentryError(f"DKIM private key is not a PEM RSA private key: {exc}") from None
        self.selector = selector
        self.domain = domain
        self._selector = selector.encode("ascii")
        self._domain = domain.encode("idna")
        self._key = private_key

    @classmethod
    def from_settings(cls, sending: SendingSettings) -> DkimSigner | None:
        """None when DKIM is not configured (none of selector, domain, key file set)."""
        values = {"dkim_selector": sending.dkim_selector, "dkim_domain": sending.dkim_domain,
                  "dkim_key_file": sending.dkim_key_file}
        if not any(values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise ConsentryError("DKIM signing needs sending.dkim_selector, sending.dkim_domain "
                                 f"and sending.dkim_key_file; missing: {', '.join(missing)}")
        path = Path(str(sending.dkim_key_file)).expanduser()
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConsentryError(f"cannot read the DKIM key file {path}: "
                                 f"{exc.strerror or exc}") from None
        return cls(str(sending.dkim_selector), str(sending.dkim_domain), key)

    def header_list(self, names: Iterable[str]) -> list[bytes]:
        """The h= list for a message with these header names (in order)."""
        signed: list[str] = []
        for name in names:
            lowered = name.lower()
            if lowered not in self._NEVER_SIGN:
                signed.append(lowered)
        signed.extend(h for h in self._OVERSIGN if h in signed)
        return [h.encode("ascii") for h in signed]

    def sign(self, message: bytes, header_names: Iterable[str]) -> bytes:
        """The DKIM-Signature header line(s), CRLF-terminated, to put in front of `message`."""
        try:
            signature: bytes = dkim.sign(message, self._selector, self._domain, self._key,
                                         canonicalize=(b"relaxed", b"relaxed"),
                                         include_headers=self.header_list(header_names),
                                         linesep=b"\r\n")
        except dkim.DKIMException as exc:
            raise MessageError(f"DKIM signing failed: {exc}") from None
        return signature


class MessageBuilder:
    """Builds messages for one sender (the From header is formatted once)."""

    def __init__(self, email_from: str, dkim_signer: DkimSigner | None = None) -> None:
        self.from_line, self.from_address = _format_from(email_from)
        self.from_domain = self.from_address.rpartition("@")[2]
        self.dkim = dkim_signer

    def envelope(self, out: Outgoing) -> tuple[str, str, bool]:
        """(MAIL FROM, RCPT TO, whether SMTPUTF8 is needed) for a message."""
        sender = _check_address(out.envelope_from, "envelope sender") if out.envelope_from \
            else self.from_address
        recipient = _check_address(out.address, "recipient")
        return sender, recipient, not (sender.isascii() and recipient.isascii()
                                       and self.from_address.isascii())

    def message_id(self, out: Outgoing) -> str:
        mid = out.message_id
        if not mid:
            return f"<{uuid4().hex}@{self.from_domain}>"
        if _FORBIDDEN_IN_VALUE.search(mid) or not mid.isascii():
            raise MessageError(f"invalid Message-ID {mid!r}")
        return mid if mid.startswith("<") else f"<{mid}>"

    def build(self, out: Outgoing, message_id: str | None = None) -> bytes:
        recipient = _check_address(out.address, "recipient")
        subject = _LINE_BREAKS.sub(" ", out.subject) if "\n" in out.subject or \
            "\r" in out.subject else out.subject
        lines = [self.from_line, f"To: {recipient}", _unstructured("Subject", subject),
                 f"Date: {_clock.date()}", f"Message-ID: {message_id or self.message_id(out)}"]
        names = ["From", "To", "Subject", "Date", "Message-ID"]
        headers: Mapping[str, str] = out.headers
        for name, value in headers.items():
            lines.append(_extra_header(name, value))
            names.append(name)
        lines.append("MIME-Version: 1.0")
        if out.html is None:
            lines.append('Content-Type: text/plain; charset="utf-8"')
            lines.append("Content-Transfer-Encoding: quoted-printable")
            names += ["MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
            body = _qp(out.text)
            if not body.endswith(_CRLF):
                body += "=" + _CRLF  # a soft line break: the text has no final newline
        else:
            # "=_" never occurs in quoted-printable text ("=" is always encoded as "=3D"), so
            # the boundary cannot collide with a part's content.
            boundary = "=_" + os.urandom(12).hex()
            lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
            names += ["MIME-Version", "Content-Type"]
            part = ('--{b}\r\nContent-Type: text/{sub}; charset="utf-8"\r\n'
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n")
            body = "".join((part.format(b=boundary, sub="plain"), _qp(out.text), _CRLF,
                            part.format(b=boundary, sub="html"), _qp(out.html), _CRLF,
                            f"--{boundary}--{_CRLF}"))
        head = _CRLF.join(lines) + _CRLF + _CRLF
        data = (head.encode("ascii") if head.isascii() else head.encode("utf-8")) + \
            body.encode("ascii")
        if self.dkim is not None:
            data = self.dkim.sign(data, names) + data
        return data


@lru_cache(maxsize=32)
def _builder(email_from: str, dkim_signer: DkimSigner | None) -> MessageBuilder:
    return MessageBuilder(email_from, dkim_signer)


def build_message(out: Outgoing, *, email_from: str, dkim: DkimSigner | None = None) -> bytes:
    """The RFC 5322 bytes of `out` (CRLF line ends), DKIM-signed when a signer is given.
    Raises MessageError for a message that cannot be built."""
    return _builder(email_from, dkim).build(out)
