"""Classifying a synchronous delivery failure (an SMTP reply, a provider's answer) into the
failure taxonomy of domain.md section 4. Pure; the feedback classifier builds on it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from consentry.domain.quarantine import REASON_CLASS, FailureClass

_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")

# What the text says about the mailbox beats the status code (a "5.1.1 mailbox full" is full).
_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.I), reason) for p, reason in (
        (r"out of office|auto.?reply|vacation|abwesen", "autoreply"),
        (r"mailbox (is )?full|over ?quota|quota exceeded|insufficient (disk )?space|"
         r"postfach (ist )?voll|storage (space )?exceeded", "mailbox_full"),
        (r"message (is )?too (big|large)|size limit|exceeds.*size", "message_invalid"),
        (r"(account|mailbox) (is )?(disabled|suspended|inactive|locked|deactivated)|"
         r"inactive (user|account)", "account_disabled"),
        (r"spam|blocked|blacklist|block ?list|denied by policy|policy|reputation|rbl|"
         r"dmarc|spf|dkim|authentication", "refused"),
        (r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
         r"recipient (address )?rejected|invalid (recipient|mailbox)|mailbox unavailable|"
         r"not found|unbekannt|address rejected", "user_unknown"),
        (r"domain (not found|does not exist)|host (not found|unknown)|no mx|null mx|"
         r"unrouteable|name or service not known|nxdomain", "invalid_domain"),
        (r"timed? ?out|connection (refused|reset|lost)|temporar|try again|"
         r"too many (connections|messages)|rate limit|throttl|greylist", "unreachable"),
    )
)

_CODE_RULES: dict[str, str] = {
    "1.1": "user_unknown", "1.6": "user_unknown", "1.2": "invalid_domain",
    "4.4": "invalid_domain", "2.2": "mailbox_full", "2.1": "account_disabled",
    "3.4": "message_invalid", "2.3": "message_invalid",
}


@dataclass(frozen=True, slots=True)
class Classified:
    klass: FailureClass
    reason: str
    status: str | None  # the enhanced status code, when there was one


def enhanced_status(text: str) -> str | None:
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def classify_reply(code: int | None, text: str) -> Classified:
    """An SMTP reply (basic code and text, which may carry an enhanced status code)."""
    status = enhanced_status(text)
    for pattern, reason in _TEXT_RULES:
        if pattern.search(text):
            return Classified(_class_for(reason, code, status), reason, status)
    if status:
        subject_detail = ".".join(status.split(".")[1:])
        if status.split(".")[1] == "7":
            return Classified(FailureClass.SOFT, "refused", status)
        if subject_detail in _CODE_RULES:
            reason = _CODE_RULES[subject_detail]
            return Classified(_class_for(reason, code, status), reason, status)
        if status.startswith("4."):
            return Classified(FailureClass.SOFT, "unreachable", status)
    if code is not None and 400 <= code < 500:
        return Classified(FailureClass.SOFT, "unreachable", status)
    return Classified(FailureClass.SOFT, "not_defined", status)


def _class_for(reason: str, code: int | None, status: str | None) -> FailureClass:
    """The reason's default class, except that a transient reply never makes a hard error."""
    klass = REASON_CLASS[reason]
    transient = (status or "").startswith("4.") or (code is not None and 400 <= code < 500)
    if klass is FailureClass.HARD and transient:
        return FailureClass.SOFT
    return klass
