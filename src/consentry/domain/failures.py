"""Classifying a synchronous delivery failure (an SMTP reply, a provider's answer) into the
failure taxonomy of domain.md section 4. Pure; the feedback classifier builds on it.

`reason_for(text, status, code)` is the shared core: what the text says about the mailbox beats
the status code (a "5.1.1 mailbox full" is full, a "5.7.1 ... user unknown" is unknown), policy
words beat weak mailbox words, and the enhanced status code decides when the text says nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from re import _constants as _sre_constants  # type: ignore[attr-defined]
from re import _parser as _sre_parser  # type: ignore[attr-defined]

from consentry.domain.quarantine import REASON_CLASS, FailureClass


def _split_top(pattern: str) -> list[str]:
    """The top-level alternatives of a regular expression."""
    out, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _literals(items: object) -> tuple[str, ...]:
    """Literals one of which every match of the parsed items contains (() when unsure):
    the longest top-level literal run, else the alternatives of a required group."""
    best = cur = ""
    groups: list[tuple[str, ...]] = []
    for op, arg in items:  # type: ignore[attr-defined]
        if op is _sre_constants.LITERAL:
            cur += chr(arg)
            continue
        best = max(best, cur, key=len)
        cur = ""
        if op is _sre_constants.SUBPATTERN:
            inner = arg[-1]
            if len(inner) == 1 and inner[0][0] is _sre_constants.BRANCH:
                options = [_literals(branch) for branch in inner[0][1][1]]
                if options and all(len(o) == 1 for o in options):
                    groups.append(tuple(o[0] for o in options))
            else:
                found = _literals(inner)
                if found:
                    groups.append(found)
    best = max(best, cur, key=len).lower()
    if len(best.strip()) >= 3:
        return (best,)
    groups = [g for g in groups if all(len(x.strip()) >= 2 for x in g)]
    if groups:  # the most selective group: the one whose shortest literal is longest
        return max(groups, key=lambda g: (min(len(x.strip()) for x in g), -len(g)))
    return (best,) if len(best.strip()) >= 2 else ()


def _required_literals(alternative: str) -> tuple[str, ...]:
    try:
        return tuple(x.lower() for x in _literals(_sre_parser.parse(alternative)))
    except Exception:
        return ()


_ESCAPE_OR_UPPER = re.compile(r"(\\.)|([^\W\d_a-z]+)")


def _lower_pattern(pattern: str) -> str:
    """The pattern for lowercased text: literal letters lowercased, escapes (\\S, \\W) kept."""
    return _ESCAPE_OR_UPPER.sub(lambda m: m.group(1) or m.group(2).lower(), pattern)


class FastPattern:
    """A big case-insensitive alternation searched fast: the text is lowercased once, each
    top-level alternative is compiled for lowercase text and only runs when a literal it must
    contain occurs in the text. `search` answers whether any alternative matches, not where
    the leftmost match is."""

    __slots__ = ("_alts", "_literals", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        alts = []
        literals: set[str] = set()
        for alt in _split_top(pattern):
            lits = frozenset(_required_literals(alt))
            literals |= lits
            alts.append((lits, re.compile(_lower_pattern(alt))))
        self._alts = tuple(alts)
        self._literals = tuple(literals)

    def search(self, text: str, low: str | None = None) -> re.Match[str] | None:
        if not text:
            return None
        if low is None:
            low = text.lower()
        present = {lit for lit in self._literals if lit in low}
        for lits, regex in self._alts:
            if lits and present.isdisjoint(lits):
                continue
            match = regex.search(low)
            if match:
                return match
        return None


_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_BASIC = re.compile(r"(?<![\d.#-])([245][0-5]\d)(?:[ -]|$)")


def _rules(*pairs: tuple[str, str]) -> tuple[tuple[FastPattern, str], ...]:
    return tuple((FastPattern(p), reason) for p, reason in pairs)


# Tier 0: facts about the *sender* or the connection that mention mailbox-like words
# ("sender domain does not exist" is not about the recipient).
_SENDER_RULES = _rules(
    (r"sender (address |domain |email )?(rejected|verify failed|.{0,40}(not found|does not "
     r"exist|unknown|not exist|invalid|blocked|denied|refused))|"
     r"(mail ?from|envelope sender|return.path|sender'?s?) (address |domain )?.{0,30}"
     r"(does not exist|not found|unknown|invalid|not resolvable|has no mx)|"
     r"client host .{0,80}rejected|helo command rejected|reverse (dns|lookup)|\bptr\b|"
     r"rdns|sender.{0,20}(unauthenticated|not authorized|not allowed)|unroutable sender|"
     r"(daily|hourly|relay|sending) (relay |sending )?(quota|limit) (reached|exceeded)|"
     r"reached (your|the) (daily |hourly )?(relay|sending) (quota|limit)", "refused"),
)

# Tier 1: what the text says about the recipient's mailbox or domain.
_MAILBOX_RULES = _rules(
    (r"mail ?box (is |was |has )?(full|over)|mailbox size limit|over ?quota|quota (exceeded|"
     r"exceed|full)|exceed(s|ed)? (his |her |their |the )?(mailbox |storage |disk )?"
     r"(quota|storage)|(storage|disk) (space |quota )?(exceeded|full)|"
     r"insufficient (disk |storage )?space|not enough (storage|space|disk)|full mail ?box|"
     r"mailfolder (is )?full|mail ?box (has )?(too many messages|exceeded)|"
     r"user (has )?exceeded|is over (the )?(allowed )?(quota|limit)|disk quota|"
     r"postfach (ist )?(voll|überfüllt)|speicherplatz|bo[iî]te (aux lettres )?(est )?pleine|"
     r"buz[oó]n (est[aá] )?lleno|casella (di posta )?(è )?piena|caixa (postal )?(est[aá] )?"
     r"(cheia|lotada)|mailbox vol|quota (overschreden|superata|excedida|d[ée]pass[ée]e)|"
     r"MailboxFull|\bmbox full|exceed\w* (\w+ ){0,2}quota|(space|storage) not enough|"
     r"inbox (is )?full|too much mail|quota violation|mailbox exceeds|"
     r"exceeded (the )?storage allocation", "mailbox_full"),
    (r"(account|mail ?box|user|recipient|address|e-?mail) (has been |was |is )?(temporarily )?"
     r"(disabled|suspended|inactive|deactivated|locked|frozen|expired|closed|not active|"
     r"no longer active|de-?activated|cancell?ed|terminated|blocked due to inactivity)|"
     r"inactive (user|account|mail ?box|recipient)|(disabled|suspended|expired|locked) "
     r"(account|mail ?box|user)|account (is )?unavailable|mailbox (is )?(currently )?"
     r"suspended|konto (ist )?(gesperrt|deaktiviert)|compte (est )?(d[ée]sactiv|suspendu|"
     r"bloqu)|cuenta (est[aá] )?(desactivada|suspendida|bloqueada)|account (ist )?gesperrt|"
     r"this account has been (disabled|discontinued)|not been collected|"
     r"account (is )?(not|no longer) (active|enabled)", "account_disabled"),
    (r"(domain|host)( name)? (\S+ )?(not found|does not exist|doesn'?t exist|unknown|"
     r"not known|lookup failed|could not be resolved)|host or domain name not found|"
     r"unknown (host|domain)|invalid domain|no mx|null ?mx|nullmx|does not accept (e-?)?mail|"
     r"accepts no mail|nxdomain|non-?existent domain|name or service not known|"
     r"unrout(e)?able (mail )?domain|domain (is )?(not valid|invalid|unroutable)|"
     r"no (such|valid) domain|illegal host/domain|name server error|host not found|"
     r"no route for domain|recipient domain .{0,30}(not|invalid)|domain (name )?(ist )?"
     r"(unbekannt|existiert nicht)|domaine (inexistant|inconnu)|dominio (inexistente|"
     r"no existe|desconocido)|mx (record )?(lookup )?(not found|failed)|"
     r"no (dns|address) records?|dns (error|lookup failed).{0,40}(domain|host)|"
     r"non-?existent (host|domain|server)s?|mx records? point to non|"
     r"the domain is not reachable\.? please check the domain",
     "invalid_domain"),
    (r"user ?unknown|unknown (user|recipient|address|mail ?box|local.?part|account|alias|"
     r"e-?mail)|no such (user|mail ?box|recipient|account|address|local user|person|"
     r"e-?mail)|(user|recipient|mail ?box|address|account|addressee|alias|e-?mail address|"
     r"local user) (\S+ )?(not found|unknown|not known|does not exist|doesn'?t exist|"
     r"not exist|is unknown|not valid|is not valid|invalid|no longer valid|no longer "
     r"(exists|available)|nonexistent|non-existent|not listed|(is )?not recognized)|"
     r"(invalid|bad|nonexistent|non-existent|unknown|illegal) (recipient|mail ?box|"
     r"user|address|e-?mail address|destination (mail ?box )?address)|"
     r"(does not|doesn'?t|did not) (have an?|match an?) .{0,40}account|"
     r"account (that you tried to reach )?does not exist|does not exist|doesn'?t exist|"
     r"no mail ?box here|no mailbox by that name|not a (valid|known) (user|recipient|"
     r"mail ?box)|is not a known user|recip(ient)? ?not ?found|recipnotfound|"
     r"recipient not found by smtp address lookup|addressee unknown|address(ee)? not "
     r"(found|known)|not listed in (the )?(domino directory|public name|address book)|"
     r"no longer (on|at|with) (this|the) (server|address|company|organi[sz]ation)|"
     r"access denied\.? as\(201806281\)|recipient address rejected: access denied|"
     r"(recipient|e-?mail) (e-?mail )?address (is )?(possibly |probably )?(incorrect|wrong)|"
     r"has moved|moved permanently|"
     r"is no longer (valid|available|in use)|address (is )?no longer|"
     r"couldn'?t be found|could not be found|unknown or illegal alias|"
     r"(user|mail ?box|recipient|account) (\S+ )?(is )?unavailable and not found|"
     r"mailbox not available|(recipient|user) (address )?rejected: (user unknown|"
     r"undeliverable|unknown|no such|not found|invalid)|undeliverable address|"
     r"user doesn'?t exist|not our customer|no valid recipients|"
     r"unbekannt|existiert nicht|nicht (vorhanden|bekannt|gefunden)|"
     r"n'existe pas|inconnu|introuvable|adresse (invalide|inexistante)|no existe|"
     r"desconocid[oa]|inexistente|sconosciut[oa]|inesistente|n[aã]o existe|desconhecid[oa]|"
     r"onbekend|bestaat niet|ei ole olemassa|finns inte|no longer valid|"
     r"invalid (\w+ ){0,2}(recipient|user|userid|address|mail ?box)|"
     r"does not have a final (e-?mail )?delivery point|no match(es)? (to|for|in) "
     r"(the )?(nameserver|directory|name server)|not (exactly )?match (an?|any) "
     r"(\w+ ){0,2}(e-?mail )?address|not a valid user|"
     # Japanese: "user ... not found (in the directory)", "does not exist", "unknown address"
     r"(ユーザ|ユーザー|宛先|アドレス|受信者).{0,80}(見つかりません|存在しません)|宛先不明",
     "user_unknown"),
    (r"message (is |was )?too (big|large|long)|message (size|length) (exceeds|is over)|"
     r"exceeds? (the )?(maximum|max|allowed|message|fixed)( \S+)? (message )?(size|length)|"
     r"size (limit|exceeds)|too large|mesg too big|message.{0,30}exceed.{0,40}size|"
     r"nachricht (ist )?zu gro|message trop (gros|volumineux)|mensaje demasiado grande|"
     r"(line|header)s? (is |are )?too long|too many (header|mime parts|attachments)|"
     r"(attachment|file type|extension).{0,40}(not allowed|prohibited|blocked|rejected)|"
     r"mime.{0,30}(error|invalid|malformed)|"
     r"improper use of 8-bit|8bitmime|bare (lf|linefeed)|message (header|format) .{0,30}"
     r"(invalid|malformed)|header (is )?(invalid|malformed|too long)",
     "message_invalid"),
)

# Tier 2: policy (the sender's problem) and transport problems.
_POLICY_RULES = _rules(
    (r"too many (connections|messages|recipients|concurrent|sessions)|rate ?limit|"
     r"throttl|greylist|gray ?list|try (again )?later|please retry|temporar(il)?y|"
     r"command died|command output|"
     r"deferred|too many hops|mail loop|loops? back|loop detected|routing loop|looping|"
     r"forwarding loop|delivery attempts|failed \d+ attempts|could not find a gateway",
     "unreachable"),
    (r"spam|junk|bulk mail|blocked|block ?list|black ?list|deny ?list|denylist|"
     r"blacklisted|listed (on|in|at)|\brbl\b|dnsbl|spamhaus|spamcop|barracuda|sorbs|"
     r"cloudmark|proofpoint|mimecast|ironport|policy|policies|reputation|poor|dmarc|\bspf\b|"
     r"dkim|authenticat|unauthenticated|not authori[sz]ed|relay(ing)? (access )?"
     r"(denied|not permitted|prohibited)|not permitted to relay|relaying denied|"
     r"we do not relay|unable to relay|relay not permitted|access denied|refused|"
     r"rejected (by|due|because|as)|"
     r"content (rejected|filter)|filtered|suspicious|phish|abus|fraud|"
     r"not accepted|(message|mail) (was )?rejected|administrative(ly)? prohibit|"
     r"prohibited|banned|forbidden|unsolicited|high volume|complain|"
     r"recipient (is not|not) (accepting|allowed)|(are|is) not accepting (mail|e-?mail|"
     r"messages)|does not accept|only accepts mail from|"
     r"not (on|in) (the )?(white|allow) ?list|security|permission to post|"
     r"not (allowed|authori[sz]ed|permitted) to (post|send)|投稿する権限|"
     r"virus (found|detected|infected)|"
     r"(contains|infected with|detected) (an? )?(virus|malware)|malware|infected|trojan|"
     r"(not |non-?)(rfc ?5322|rfc ?2822|rfc ?822) ?(compliant|conformant)|"
     r"malformed (recipient )?address|incorrectly constructed|"
     r"not (compliant|conformant) with rfc", "refused"),
    (r"time[ds]? ?out|timeout|connection (refused|reset|lost|closed|dropped|failed|"
     r"timed)|could not connect|couldn'?t connect|unable to connect|failed to connect|"
     r"cannot connect|no route to host|network (is )?unreachable|host (is )?unreachable|"
     r"did not accept our requests? to connect|socket error|"
     r"unreachable|retry time|retry timeout|expired|too long in (the )?queue|"
     r"in the queue too long|could not be delivered (with|in|for|within)|"
     r"delivery time|given up|giving up|gave up|no answer|not responding|"
     r"lost connection|connection to .{0,60}(failed|lost)|"
     r"system (error|failure|problem|not accepting)|"
     r"resources? (temporarily )?(unavailable|exhausted)|local error|internal error|"
     r"service (not available|unavailable)|out of (memory|disk)|i/o error|"
     r"mailer error|server (busy|error)|\btls\b|\bssl\b|starttls|certificate", "unreachable"),
)

# Tier 3: weak mailbox words: after the policy words and after an X.7 status code.
_WEAK_RULES = _rules(
    # DNS trouble: the status code (4.4.3 transient, 5.4.4 / 5.1.2 permanent) says more.
    (r"dns (error|failure|problem|lookup)|name ?server|servfail|name service error",
     "unreachable"),
    (r"mail ?box (is )?(currently )?unavailable|mailbox not found|recipient (address )?"
     r"rejected|address rejected|not found|invalid (address|recipient)|"
     r"rejected recipient|recipient (invalid|unknown|no good)|bad (address|recipient)|"
     r"unable to (deliver|relay) to|no such", "user_unknown"),
)

_CODE_RULES: dict[str, str] = {
    "1.1": "user_unknown", "1.6": "user_unknown", "1.3": "user_unknown", "1.5": "user_unknown",
    "1.4": "user_unknown", "1.2": "invalid_domain", "1.10": "invalid_domain",
    "4.4": "invalid_domain", "2.2": "mailbox_full", "2.1": "account_disabled",
    "3.4": "message_invalid", "2.3": "message_invalid", "6.0": "message_invalid",
    "6.1": "message_invalid", "6.2": "message_invalid", "6.3": "message_invalid",
    "6.4": "message_invalid", "6.5": "message_invalid", "6.6": "message_invalid",
    "1.7": "refused", "1.8": "refused",
}


@dataclass(frozen=True, slots=True)
class Classified:
    klass: FailureClass
    reason: str
    status: str | None  # the enhanced status code, when there was one


def enhanced_status(text: str) -> str | None:
    match = _ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def basic_code(text: str) -> int | None:
    """The first three-digit SMTP reply code in `text` (550, 452, ...), if any."""
    match = _BASIC.search(text)
    return int(match.group(1)) if match else None


def strong_reason(text: str) -> str | None:
    """What the words say, leaving out the weak mailbox words ("mailbox unavailable")."""
    if not text:
        return None
    low = text.lower()
    for rules in (_SENDER_RULES, _MAILBOX_RULES, _POLICY_RULES):
        for pattern, reason in rules:
            if pattern.search(text, low):
                return reason
    return None


def weak_reason(text: str) -> str | None:
    if not text:
        return None
    low = text.lower()
    for pattern, reason in _WEAK_RULES:
        if pattern.search(text, low):
            return reason
    return None


def text_reason(text: str, status: str | None = None) -> str | None:
    """What the words alone say, or None. Weak words come after a specific status code."""
    return strong_reason(text) or status_reason(status) or weak_reason(text)


def status_reason(status: str | None, code: int | None = None) -> str | None:
    """What the enhanced status code (else the basic reply code) alone says, or None."""
    if status:
        cls, subject, detail = status.split(".")
        if subject == "7":
            return "refused"
        reason = _CODE_RULES.get(f"{subject}.{detail}")
        if reason == "invalid_domain" and cls == "4":
            reason = "unreachable"
        if reason:
            return reason
        if subject in ("4", "3") or cls == "4":
            return "unreachable"
    if code is not None:
        if 400 <= code < 500:
            return "unreachable"
        if code == 551:
            return "user_unknown"
        if code == 552:
            return "mailbox_full"
    return None


def reason_for(text: str, status: str | None = None, code: int | None = None,
               context: str = "") -> tuple[str, FailureClass]:
    """Reason and class for a failure described by `text` (the MTA's diagnostic), its codes
    when known, and `context` (the human-readable part around it) when the rest says nothing.

    Order: strong words in the diagnostic, the specific enhanced status code, weak words in the
    diagnostic, strong words in the context, the basic reply code, `not_defined`."""
    reason = (strong_reason(text) or status_reason(status) or weak_reason(text)
              or strong_reason(context) or status_reason(None, code) or weak_reason(context)
              or "not_defined")
    if reason in ("user_unknown", "invalid_domain") and status and status.endswith(
            (".1.7", ".1.8")):
        reason = "refused"  # X.1.7 / X.1.8 are about the sender's address, not the recipient
    return reason, class_for(reason, code, status)


def classify_reply(code: int | None, text: str) -> Classified:
    """An SMTP reply (basic code and text, which may carry an enhanced status code)."""
    status = enhanced_status(text)
    if re.search(r"out of office|auto.?reply|vacation|abwesen", text, re.I):
        return Classified(FailureClass.IGNORED, "autoreply", status)
    reason, klass = reason_for(text, status, code)
    return Classified(klass, reason, status)


def class_for(reason: str, code: int | None, status: str | None) -> FailureClass:
    """The reason's default class, except that a transient reply never makes a hard error."""
    klass = REASON_CLASS[reason]
    transient = (status or "").startswith("4.") or (code is not None and 400 <= code < 500)
    if klass is FailureClass.HARD and transient:
        return FailureClass.SOFT
    return klass


_class_for = class_for  # the former private name
