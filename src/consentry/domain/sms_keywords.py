"""Inbound SMS keywords (domain.md section 5), as pure functions.

`parse(text, keywords)` says what a mobile-originated message asks for: `stop`, `start`,
`help` or `none`. Matching is case-, accent- and punctuation-insensitive ("stop!!!", "Stopp.",
"ARRÊT", "S.T.O.P", "opt-out" all read the same). US rules (FCC 47 CFR 64.1200) count any
reasonable wording as an opt-out, so besides the bare keyword this accepts:

1. a keyword with polite filler around it ("Stop. Thank you", "STOP please", "Stopp bitte",
   "unsubscribe me", "please opt me out"): every word of the message is a keyword or filler;
2. a recognised opt-out phrase in a short message ("remove me from this list", "don't text me
   anymore", "keine SMS mehr", "no más mensajes"), unless a negation stands right before it
   ("please don't remove me from the list"); the negation must be in the same sentence, so
   "No. Stop texting me" is an opt-out;
3. in a short message, a sentence that is an opt-out keyword alone ("Got it. STOP").

Precision matters as much: a keyword must be the message's main content, so "don't stop sending
me deals", "I'll stop by tomorrow" or "cancel my order" are `none` (they are stored for a
person to read, nothing changes). Negations are never filler.

Keyword sets: built-in defaults, overridden by the configured "default" table, overridden by the
table of the sender number the message was sent to (`keyword_set`). Stop words are only ever
added to: the built-in opt-out words and phrases always count, whatever a table says, because
an opt-out must never be missed. Start and help lists, and the replies, replace what they
override (a sender may want "YES" to mean something else).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from consentry.domain.addresses import normalize_phone
from consentry.domain.errors import InvalidAddress


class Action(StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"
    NONE = "none"


DEFAULT_STOP = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT",
                "STOPP", "ENDE", "ABMELDEN")
DEFAULT_START = ("START", "UNSTOP", "YES", "ANMELDEN")
DEFAULT_HELP = ("HELP", "INFO", "HILFE")

# Short, neutral, no marketing: the one confirmation the rules allow.
DEFAULT_STOP_REPLY = ("You have been unsubscribed and will receive no more messages from us. "
                      "Reply START to opt back in.")
DEFAULT_START_REPLY = ("You have opted back in to messages from us. Reply STOP to unsubscribe, "
                       "HELP for help.")
DEFAULT_HELP_REPLY = "Reply STOP to unsubscribe, START to opt back in."

# Opt-out words of other languages, counted like stop keywords for every sender (accents and
# case do not matter: ARRÊT is ARRET). French, Spanish, Italian, Portuguese, Dutch, German.
EXTRA_STOP = frozenset({
    "ARRET", "ARRETER", "ARRETEZ", "DESABONNER", "DESABONNEZ", "DESABONNEMENT",
    "DESINSCRIRE", "DESINSCRIVEZ", "DESINSCRIPTION",
    "BAJA", "ALTO", "PARAR", "PARE", "CANCELAR", "DESUSCRIBIR", "DESUSCRIBIRME",
    "CANCELLA", "CANCELLAMI", "BASTA", "DISISCRIVI", "DISISCRIVIMI", "DISISCRIZIONE",
    "SAIR", "DESCADASTRAR",
    "AFMELDEN", "UITSCHRIJVEN", "STOPPEN",
    "AUSTRAGEN", "ABBESTELLEN", "ABMELDUNG", "STOPPT",
    "UNSUBSCRIBED", "UNSUB", "OPTOUT",
})
EXTRA_HELP = frozenset({"AIDE", "AYUDA", "AIUTO", "AJUDA"})

# Words that may stand around a keyword without changing what it says: politeness, greetings,
# "me", "all", "now", "texts". Never negations ("don't", "not", "no", "nicht").
FILLER = frozenset({
    # English
    "PLEASE", "PLS", "PLZ", "PLEASEE", "PLEASEEE", "KINDLY", "THANK", "THANKS", "THANKYOU",
    "THX", "TY", "YOU", "VERY", "MUCH", "ME", "MY", "NUMBER", "NOW", "JUST", "ALL", "IT",
    "THIS", "OK", "OKAY", "HI", "HELLO", "HEY", "SORRY", "SIR", "MADAM", "TEXT", "TEXTS",
    "MESSAGE", "MESSAGES", "MSG", "MSGS", "SMS", "AND", "A", "RIGHT", "AWAY", "IMMEDIATELY",
    "ASAP", "AGAIN", "FROM", "LIST", "SUBSCRIPTION", "SUBSCRIPTIONS", "SERVICE",
    # German
    "BITTE", "DANKE", "SCHON", "VIELEN", "DANK", "MICH", "MEINE", "NUMMER", "HALLO", "JETZT",
    "SOFORT", "ALLES", "NACHRICHTEN", "NACHRICHT", "UND", "GUTEN", "TAG",
    # French
    "MERCI", "SVP", "STP", "SIL", "VOUS", "PLAIT", "TE", "BEAUCOUP", "BONJOUR", "MOI", "TOUT",
    # Spanish, Italian, Portuguese, Dutch
    "POR", "FAVOR", "GRACIAS", "HOLA", "PER", "FAVORE", "GRAZIE", "CIAO", "OBRIGADO",
    "OBRIGADA", "OLA", "ALSJEBLIEFT", "AUB", "DANKJEWEL", "BEDANKT",
})

NEGATIONS = frozenset({"DONT", "NOT", "NEVER", "NO", "NICHT", "KEIN", "NIE", "NE", "PAS",
                       "NON", "NUNCA", "NIET", "DIDNT", "DOESNT", "WONT", "CANT", "ISNT"})

_PHRASES = [
    # English
    r"(OPT|OPTED) ME OUT", r"OPT OUT", r"UNSUBSCRIBE", r"UNSUBSCRIBED",
    r"REMOVE (ME|MY NUMBER|THIS NUMBER)", r"DELETE (ME|MY NUMBER)",
    r"TAKE (ME|MY NUMBER) OFF",
    r"(STOP|QUIT|CEASE) (TEXTING|MESSAGING|SENDING|CONTACTING|SPAMMING|CALLING)",
    r"(STOP|END|CANCEL|QUIT) (THE |THESE |THOSE |ALL |YOUR |ALL THESE |ALL YOUR )?"
    r"(TEXTS|MESSAGES|SMS|MSGS|SPAM|ALERTS|NOTIFICATIONS)",
    r"(DONT|DO NOT|NEVER) (TEXT|MESSAGE|SMS|CONTACT|SEND|EMAIL|CALL|SPAM)",
    r"(NO|NOT ANY) MORE (TEXTS|TEXT|MESSAGES|MESSAGE|SMS|MSGS|SPAM)",
    r"(DONT|DO NOT) WANT (THESE|THIS|ANY|YOUR|MORE|TO RECEIVE|TO GET)",
    r"LEAVE ME ALONE", r"WRONG NUMBER",
    # German
    r"KEINE (WEITEREN )?(SMS|NACHRICHTEN|WERBUNG|TEXTE)( \w+){0,2} MEHR",
    r"KEINE WEITEREN (SMS|NACHRICHTEN|WERBUNG|TEXTE)",
    r"(MICH )?(ABMELDEN|AUSTRAGEN|ABBESTELLEN)",
    r"NICHT MEHR (SCHREIBEN|ANSCHREIBEN|KONTAKTIEREN|SENDEN|SCHICKEN|BELASTIGEN)",
    r"(SCHREIBEN|SCHICKEN|SENDEN) SIE MIR (KEINE|NICHTS)",
    r"(SCHREIBEN|SCHICKEN|SENDEN|KONTAKTIEREN|SIMSEN)( \w+){0,3} NICHT MEHR",
    r"(ENTFERNEN|LOSCHEN) SIE (MICH|MEINE NUMMER)",
    # French
    r"(ME )?(DESABONNER|DESINSCRIRE)", r"PLUS DE (SMS|MESSAGES|TEXTOS)",
    r"NE PLUS (RECEVOIR|ETRE CONTACTE)",
    # Spanish
    r"(DAR|DARME|DE) DE BAJA", r"NO (QUIERO )?(RECIBIR )?MAS (MENSAJES|SMS)",
    r"NO ME (ENVIEN|ENVIES|MANDEN|MANDES|ESCRIBAN)",
    # Italian
    r"NON (VOGLIO )?(PIU )?(RICEVERE )?(MESSAGGI|SMS)", r"NON (MI )?(SCRIVETE|INVIATE|MANDATE)",
    r"(CANCELLAMI|DISISCRIVIMI|RIMUOVIMI|TOGLIMI)",
]
_PHRASE_RE = re.compile(r"(?:^| )(?:" + "|".join(_PHRASES) + r")(?= |$)")

# Phrases only count in messages of at most this many words (a long message that mentions
# "unsubscribe" in passing is for a person to read); keyword-plus-filler at most KEYWORD_MAX.
PHRASE_MAX_WORDS = 20
KEYWORD_MAX_WORDS = 12

# Sentence ends (also the Spanish, CJK and full-width forms) and apostrophes (also typographic).
_SENTENCES = re.compile("[.!?;,:\n\u00a1\u00bf\u3002\uff01\uff1f\uff0c]+")
_APOSTROPHES = re.compile("['`\u00b4\u02bc\u2018\u2019]")
_NOT_WORD = re.compile(r"[\W_]+")


def words(text: str) -> list[str]:
    """Uppercase words without accents, punctuation, emoji or apostrophes ("Don't!" -> DONT)."""
    decomposed = unicodedata.normalize("NFKD", _APOSTROPHES.sub("", text).casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_WORD.sub(" ", plain).upper().split()


def normalize_keyword(word: str) -> str:
    """A configured keyword as it is matched: words() joined ("opt out" -> OPTOUT)."""
    return "".join(words(word))


@dataclass(frozen=True, slots=True)
class KeywordSet:
    stop: tuple[str, ...] = DEFAULT_STOP
    start: tuple[str, ...] = DEFAULT_START
    help: tuple[str, ...] = DEFAULT_HELP
    stop_reply: str = DEFAULT_STOP_REPLY
    start_reply: str = DEFAULT_START_REPLY
    help_reply: str = DEFAULT_HELP_REPLY

    def reply(self, action: Action) -> str | None:
        return {Action.STOP: self.stop_reply, Action.START: self.start_reply,
                Action.HELP: self.help_reply}.get(action)

    def lookup(self) -> Mapping[str, Action]:
        """Normalized word -> action; stop wins over start wins over help (cached)."""
        return _lookup(self)


@functools.lru_cache(maxsize=256)
def _lookup(keywords: KeywordSet) -> Mapping[str, Action]:
    table: dict[str, Action] = {}
    for action, group in ((Action.HELP, (*keywords.help, *EXTRA_HELP)),
                          (Action.START, keywords.start),
                          (Action.STOP, (*keywords.stop, *EXTRA_STOP))):
        for word in group:
            key = normalize_keyword(word)
            if key:
                table[key] = action
    return MappingProxyType(table)


DEFAULT_KEYWORDS = KeywordSet()


def sender_key(sender: str, region: str = "DE") -> str:
    """How a sender number is matched: E.164 digits for phone numbers ("+49 151 ..." and
    "0151..." with region DE are one sender), the digits of a short code, or the casefolded
    text of an alphanumeric sender id."""
    text = sender.strip()
    if not re.search(r"[^\W\d_]", text):  # no letters: a number or a short code
        try:
            return normalize_phone(text, region).key.lstrip("+")
        except InvalidAddress:
            digits = re.sub(r"\D", "", text)
            return digits[2:] if digits.startswith("00") else digits
    return text.casefold()


def _words_of(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(str(v) for v in value if normalize_keyword(str(v)))


def _merged(base: KeywordSet, table: Mapping[str, Any]) -> KeywordSet:
    changes: dict[str, Any] = {}
    if "stop" in table:
        changes["stop"] = tuple(dict.fromkeys((*base.stop, *_words_of(table["stop"]))))
    for key in ("start", "help"):
        if key in table:
            changes[key] = _words_of(table[key])
    for key in ("stop_reply", "start_reply", "help_reply"):
        if key in table:
            changes[key] = str(table[key])
    return replace(base, **changes)


def keyword_set(config: Mapping[str, Mapping[str, Any]], sender: str,
                region: str = "DE") -> KeywordSet:
    """The keywords and replies for messages sent to `sender`: built-in defaults, then the
    "default" table, then the sender's own table (matched after normalizing both numbers)."""
    result = DEFAULT_KEYWORDS
    if isinstance(config.get("default"), Mapping):
        result = _merged(result, config["default"])
    key = sender_key(sender, region) if sender.strip() else ""
    if key:
        for name, table in config.items():
            if name != "default" and isinstance(table, Mapping) and \
                    sender_key(name, region) == key:
                result = _merged(result, table)
    return result


def parse(text: str, keywords: KeywordSet = DEFAULT_KEYWORDS) -> Action:
    """What the message asks for (see the module docstring)."""
    tokens = words(text)
    if not tokens:
        return Action.NONE
    table = keywords.lookup()
    found = _keyword_only(tokens, table)
    if found is not None:
        return found
    if len(tokens) > PHRASE_MAX_WORDS:
        return Action.NONE
    # Sentence by sentence: "No. Stop texting me" is an opt-out whose "No" negates nothing,
    # and a sentence that is an opt-out keyword alone ("Got it. STOP") is one too.
    segments = [seg for seg in (words(s) for s in _SENTENCES.split(text)) if seg]
    if len(segments) > 1 and any(_keyword_only(seg, table) is Action.STOP for seg in segments):
        return Action.STOP
    if any(_opt_out_phrase(seg) for seg in segments):
        return Action.STOP
    return Action.NONE


def _keyword_only(tokens: list[str], table: Mapping[str, Action]) -> Action | None:
    """The action when the message is keywords and filler only ("Stop. Thank you")."""
    if len(tokens) > KEYWORD_MAX_WORDS:
        return None
    if "".join(tokens) in table:  # "S T O P", "opt-out", "stop all"
        return table["".join(tokens)]
    rest = [t for t in tokens if t in table or t not in FILLER]
    if not rest:
        return None
    actions = [table.get(t) for t in rest]
    if all(a is not None for a in actions):
        return _strongest(a for a in actions if a is not None)
    return table.get("".join(rest))  # "please opt me out" -> OPT OUT -> OPTOUT


def _strongest(actions: Iterable[Action]) -> Action:
    found = set(actions)
    for action in (Action.STOP, Action.START, Action.HELP):
        if action in found:
            return action
    return Action.NONE


def _opt_out_phrase(tokens: list[str]) -> bool:
    joined = " ".join(tokens)
    for match in _PHRASE_RE.finditer(joined):
        start = match.start() + (1 if joined[match.start()] == " " else 0)
        before = joined[:start].split()[-2:]
        phrase_negates = joined[start:].split(" ", 1)[0] in NEGATIONS
        if phrase_negates or not any(w in NEGATIONS for w in before):
            return True
    return False
