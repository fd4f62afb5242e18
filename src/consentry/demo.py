"""Demo data for `consentry demo`: a few thousand realistic, deterministic profiles.

`build_demo` fills an empty, migrated database. Every change goes through the service functions
(profiles, consent, quarantine), so every consent change is in the ledger with a realistic
source, and the ledger verifies afterwards. The story is planned first: each profile gets a
timeline (created, signed up, confirmed, bounced, opted out...) spread over the last two years;
then all steps of all profiles run in time order, with the daily housekeeping (subscription
expiry, time-based quarantine releases) at 03:00 UTC in between, as a running system would.

Addresses are never routable: email domains are example.com, example.de, example.org and their
subdomains; IP addresses come from the documentation ranges (RFC 5737, RFC 3849); US numbers
use the fictional 555-01XX block. German and UK mobile numbers are random numbers that
phonenumbers accepts as valid (their fictional ranges are not: libphonenumber rejects Ofcom's
07700 900XXX), so the demo must never be pointed at a real SMS gateway.

A handful of hand-made profiles (Anna Schmidt, who opted out; Julia Fischer, who has two
profiles; ...) show each case; `DemoSummary.examples` names them.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import phonenumbers
import sqlalchemy as sa

from consentry.consent import service as consent
from consentry.domain import quarantine as qrules
from consentry.domain.addresses import (
    Address,
    email_domain,
    normalize_email,
    normalize_phone,
    normalize_push_token,
)
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError
from consentry.domain.ledger import Origin, Source
from consentry.profiles import service as profiles
from consentry.profiles.sql import DUPLICATE_ADDRESSES
from consentry.quarantine import service as quarantine
from consentry.settings import Settings
from consentry.store.schema import opt_outs
from consentry.store.schema import profiles as profiles_table
from consentry.store.schema import quarantine as quarantine_table
from consentry.store.types import utcnow

MIN_PROFILES = 50

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)

NEWSLETTER = "newsletter"
SMS_ALERTS = "sms-alerts"
NEWSLETTER_VALIDITY_DAYS = 365
SHORT_CODE = "81888"
APP_ID = "com.example.shop"

T = TypeVar("T")


@dataclass(frozen=True)
class DemoSummary:
    """What `build_demo` made, counted in the database afterwards."""

    profiles: int
    opted_out: int  # globally
    channel_opted_out: int  # opted out of one channel (or more), not globally
    quarantined: int  # addresses quarantined (hard bounces, mailbox full...)
    denylisted: int  # addresses denylisted (complaints, SMS STOP)
    services: list[str]  # slugs
    shared_addresses: int  # addresses held by two profiles (the seed's two-profiles case)
    examples: dict[str, str]  # name -> a profile REF worth looking at


# --- names, places, devices --------------------------------------------------------------

DE_FEMALE = (
    "Anna", "Lena", "Julia", "Laura", "Sarah", "Lea", "Hannah", "Katharina", "Sophie", "Marie",
    "Johanna", "Lisa", "Christina", "Sabine", "Petra", "Claudia", "Andrea", "Stefanie",
    "Nicole", "Melanie", "Birgit", "Ute", "Jana", "Franziska", "Miriam", "Charlotte",
    "Theresa", "Verena", "Jülide", "Käthe", "Annika", "Svenja", "Carina", "Nina", "Greta",
)
DE_MALE = (
    "Lukas", "Jonas", "Felix", "Maximilian", "Leon", "Paul", "Tobias", "Daniel", "Florian",
    "Michael", "Thomas", "Andreas", "Stefan", "Markus", "Christian", "Alexander", "Sebastian",
    "Jan", "Tim", "Matthias", "Jürgen", "Jörg", "Björn", "Sören", "Uwe", "Klaus", "Wolfgang",
    "Niklas", "Moritz", "Philipp", "Fabian", "Benedikt", "Dominik", "Ralf", "Hendrik",
)
DE_LAST = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
    "Schulz", "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder",
    "Neumann", "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange",
    "Schmitt", "Werner", "Schmitz", "Krause", "Meier", "Lehmann", "Köhler", "Huber", "Maier",
    "Gruber", "Hofer", "Steiner", "Keller", "Frei", "Brunner", "Vogel", "Jäger", "Groß",
    "Weiß", "Böhm", "Hübner", "Kaiser", "Fuchs", "Peters", "Scholz", "Möller", "Lorenz",
    "Baumann", "Franke", "Albrecht", "Winkler", "Berger", "Moser", "Egger", "Graf",
)
EN_FEMALE = (
    "Emily", "Olivia", "Amelia", "Isla", "Ava", "Sophie", "Grace", "Chloe", "Jessica",
    "Emma", "Charlotte", "Hannah", "Lucy", "Ellie", "Megan", "Rebecca", "Sarah", "Laura",
    "Rachel", "Hayley", "Ashley", "Madison", "Abigail", "Samantha", "Natalie", "Victoria",
    "Lauren", "Kayla", "Brittany", "Danielle",
)
EN_MALE = (
    "Oliver", "George", "Harry", "Jack", "Jacob", "Noah", "Charlie", "Thomas", "Oscar",
    "William", "James", "Henry", "Daniel", "Samuel", "Joseph", "Matthew", "Ryan", "Liam",
    "Ethan", "Michael", "David", "Christopher", "Andrew", "Joshua", "Tyler", "Brandon",
    "Kevin", "Justin", "Nathan", "Aaron",
)
EN_LAST = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood",
    "Jackson", "Clarke", "Miller", "Davis", "Garcia", "Martinez", "Anderson", "Thomas",
    "Moore", "Martin", "Lee", "Harris", "Clark", "Lewis", "Young", "King", "Scott", "Hughes",
    "Edwards", "Turner", "Baker", "Cooper", "Morgan", "Bennett", "O'Brien", "Murphy",
    "Campbell", "Stewart", "Parker", "Collins", "Mitchell", "Carter",
)

LOCALES = (("de-DE", 0.52), ("de-AT", 0.08), ("de-CH", 0.07), ("en-GB", 0.19),
           ("en-US", 0.14))

DE_DOMAINS = (("example.de", 24), ("mail.example.de", 15), ("post.example.de", 10),
              ("web.example.de", 10), ("example.com", 14), ("mail.example.com", 9),
              ("example.org", 8), ("inbox.example.org", 5), ("online.example.de", 5))
EN_DOMAINS = (("example.com", 26), ("mail.example.com", 14), ("example.org", 18),
              ("inbox.example.org", 12), ("uk.example.com", 10), ("us.example.com", 10),
              ("mail.example.org", 10))
# Domains of addresses that bounce with invalid_domain: their mail service was shut down.
DEFUNCT_DOMAINS = ("oldmail.example.de", "nomx.example.org")
# The domain of the simulated false-bounce outage (the Gmail case, domain.md section 4).
OUTAGE_DOMAIN = "mail.example.com"

STORES = {
    "de-DE": ("Berlin Mitte", "Hamburg", "München", "Köln", "Frankfurt", "Leipzig", "online"),
    "de-AT": ("Wien", "Graz", "Linz", "online"),
    "de-CH": ("Zürich", "Basel", "Bern", "online"),
    "en-GB": ("London Oxford Street", "Manchester", "Edinburgh", "online"),
    "en-US": ("New York", "Chicago", "Seattle", "online"),
}
TIERS = (("bronze", 50), ("silver", 30), ("gold", 15), ("platinum", 5))
INTERESTS = ("outdoor", "running", "fashion", "home", "kitchen", "kids", "electronics",
             "garden", "travel")

DE_MOBILE_PREFIXES = ("151", "152", "157", "159", "160", "162", "163", "170", "171", "172",
                      "173", "174", "175", "176", "177", "178", "179")
UK_MOBILE_PREFIXES = ("74", "75", "77", "78", "79")
US_AREA_CODES = ("201", "202", "206", "212", "213", "303", "305", "312", "404", "415", "503",
                 "512", "602", "617", "702", "713", "718", "773", "808", "917")

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (iPad; CPU OS 16_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
)
ONE_CLICK_AGENTS = ("ExampleMail-OneClick/1.2", "Mozilla/5.0 (compatible; UnsubscribeBot/2.0; "
                    "+https://mail.example.com/bot)")
OPERATORS = ("os:jkoch", "os:lmeyer", "os:sbauer", "os:rthompson")

# Wording versions shown on the pages, as the ledger records them.
NEWSLETTER_WORDING_OLD = "newsletter-consent-v2"
NEWSLETTER_WORDING = "newsletter-consent-v3"
SMS_WORDING = "sms-alerts-consent-v1"
OPTOUT_WORDING = "optout-page-v1"
PREFERENCES_WORDING = "preferences-v2"
UNSUBSCRIBE_WORDING = "unsubscribe-page-v2"

_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe",
                           "Ü": "Ue", "'": "", " ": ""})
_B64URL = string.ascii_letters + string.digits + "-_"


def _ascii(name: str) -> str:
    return name.translate(_TRANSLIT).lower()


# --- the plan ------------------------------------------------------------------------------


@dataclass
class _Person:
    first_name: str
    last_name: str
    locale: str
    created_at: datetime
    created_via: str  # Source.IMPORT, Source.LANDING_PAGE or Source.CLI
    email: str | None = None  # as given
    phone: str | None = None  # as given (international format with spaces)
    tokens: list[profiles.PushToken] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    external_id: str | None = None
    wants_external_id: bool = True
    shared: bool = False  # the email address is held by two profiles
    origin: Origin | None = None  # how the profile was created
    profile_id: int | None = None

    @property
    def email_address(self) -> Address:
        assert self.email is not None
        return normalize_email(self.email)

    @property
    def phone_address(self) -> Address:
        assert self.phone is not None
        return normalize_phone(self.phone)

    @property
    def e164(self) -> str:
        return self.phone_address.value


_Step = tuple[datetime, int, Callable[[], object]]


class _Builder:
    def __init__(self, conn: sa.Connection, settings: Settings, rng: random.Random,
                 now: datetime) -> None:
        self.conn = conn
        self.settings = settings
        self.q = settings.quarantine
        self.rng = rng
        self.now = now
        self.start = now - timedelta(days=760)  # the services exist a month before any profile
        self.oldest = now - timedelta(days=730)
        day = (now - timedelta(days=93)).replace(hour=9, minute=0, second=0)
        self.outage = (day, day + timedelta(hours=40))
        # CRM imports: the initial one, then monthly syncs.
        self.imports = [self.oldest + timedelta(days=2, hours=7)] + [
            self.oldest + timedelta(days=30 * m + 1, hours=6) for m in range(1, 24)]
        self.steps: list[_Step] = []
        self.people: list[_Person] = []
        self.email_keys: set[str] = set()
        self.phones: set[str] = set()
        self.tokens: set[str] = set()
        self.services: dict[str, consent.Service] = {}
        self.examples: dict[str, _Person] = {}
        # When the daily housekeeping has something to do, and what: a subscription runs out
        # ("expiry") or a quarantine is released by time ("release"). Only those runs are
        # made, since a run with nothing due changes nothing.
        self.due: dict[datetime, set[str]] = {}
        self.ticket = 48000

    # --- small random helpers --------------------------------------------------------------

    def weighted(self, options: Sequence[tuple[T, float]]) -> T:
        values = [v for v, _ in options]
        return self.rng.choices(values, weights=[w for _, w in options])[0]

    def between(self, lo: datetime, hi: datetime) -> datetime | None:
        """A random time in [lo, hi] (whole seconds), or None when the window is empty."""
        span = int((hi - lo).total_seconds())
        if span < 1:
            return None
        return lo + timedelta(seconds=self.rng.randint(1, span))

    def ago(self, days: float) -> datetime:
        """About `days` ago, at some time of that day (up to five hours earlier)."""
        return self.now - timedelta(days=days, seconds=self.rng.randint(0, 5 * 3600))

    def ip(self) -> str:
        if self.rng.random() < 0.2:
            return f"2001:db8:{self.rng.randint(1, 0xffff):x}::{self.rng.randint(1, 0xffff):x}"
        net = self.rng.choice(("192.0.2", "198.51.100", "203.0.113"))
        return f"{net}.{self.rng.randint(1, 254)}"

    def confirm_delay(self) -> timedelta:
        """How long people take to click the confirmation link: mostly minutes."""
        minutes = min(self.rng.expovariate(1 / 45), 36 * 60)
        return timedelta(seconds=int(40 + minutes * 60))

    # --- origins ---------------------------------------------------------------------------

    def web(self, wording: str | None, page: str) -> Origin:
        return Origin(source=Source.LANDING_PAGE, ip=self.ip(),
                      user_agent=self.rng.choice(USER_AGENTS), wording=wording,
                      evidence={"page": page})

    def newsletter_wording(self, at: datetime) -> str:
        return NEWSLETTER_WORDING_OLD if at < self.now - timedelta(days=400) else NEWSLETTER_WORDING

    def operator(self, note: str) -> Origin:
        self.ticket += self.rng.randint(1, 40)
        return Origin(source=Source.CLI, actor=self.rng.choice(OPERATORS),
                      note=f"ticket #{self.ticket}: {note}")

    def import_origin(self, at: datetime) -> Origin:
        return Origin(source=Source.IMPORT, actor="os:jkoch",
                      note=f"crm-export-{at:%Y-%m-%d}.csv")

    def optout_page(self, channel: Channel | None) -> Origin:
        """The opt-out page (everything) or the preference centre (one channel)."""
        if channel is None:
            return self.web(OPTOUT_WORDING, "/optout")
        return self.web(PREFERENCES_WORDING, "/preferences")

    def one_click(self) -> Origin:
        return Origin(source=Source.ONE_CLICK, ip=self.ip(),
                      user_agent=self.rng.choice(ONE_CLICK_AGENTS),
                      evidence={"list_unsubscribe_post": "List-Unsubscribe=One-Click"})

    # --- addresses -------------------------------------------------------------------------

    def unique_email(self, first: str, last: str, domain: str) -> str:
        f, la = _ascii(first), _ascii(last)
        pattern = self.weighted((("{f}.{l}", 40), ("{f}{l}", 12), ("{i}.{l}", 12),
                                 ("{f}_{l}", 6), ("{l}.{f}", 6), ("{f}.{l}{n}", 16),
                                 ("{f}{n}", 8)))
        n = str(self.rng.choice((self.rng.randint(1, 99), self.rng.randint(1960, 2005))))
        local = pattern.format(f=f, l=la, i=f[0], n=n)
        if self.rng.random() < 0.03:  # typed with capitals: sent as given, matched lowercased
            local = local.capitalize()
        email = f"{local}@{domain}"
        while normalize_email(email).key in self.email_keys:
            email = f"{local}{self.rng.randint(2, 999)}@{domain}"
        self.email_keys.add(normalize_email(email).key)
        return email

    def reserve_email(self, email: str) -> str:
        key = normalize_email(email).key
        assert key not in self.email_keys, email
        self.email_keys.add(key)
        return email

    def unique_phone(self, locale: str) -> str:
        while True:
            if locale == "en-US":
                raw = f"+1{self.rng.choice(US_AREA_CODES)}5550{self.rng.randint(100, 199)}"
            elif locale == "en-GB":
                prefix = self.rng.choice(UK_MOBILE_PREFIXES)
                raw = f"+447{prefix[1]}{self.rng.randint(0, 10**8 - 1):08d}"
            else:
                prefix = self.rng.choice(DE_MOBILE_PREFIXES)
                digits = 8 if prefix.startswith("15") else self.rng.choice((7, 8))
                raw = f"+49{prefix}{self.rng.randint(10 ** (digits - 1), 10**digits - 1)}"
            number = phonenumbers.parse(raw)
            if raw in self.phones or not phonenumbers.is_valid_number(number):
                continue
            self.phones.add(raw)
            return phonenumbers.format_number(number,
                                              phonenumbers.PhoneNumberFormat.INTERNATIONAL)

    def push_token(self, platform: str) -> profiles.PushToken:
        while True:
            if platform == "ios":
                token = f"{self.rng.getrandbits(256):064x}"
            else:
                token = ("".join(self.rng.choices(_B64URL, k=22)) + ":APA91b"
                         + "".join(self.rng.choices(_B64URL, k=134)))
            if token not in self.tokens:
                self.tokens.add(token)
                return profiles.PushToken(token, APP_ID, platform)

    # --- scheduling ------------------------------------------------------------------------

    def at(self, when: datetime, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        assert when <= self.now, (when, fn)
        self.steps.append((when, len(self.steps), partial(fn, *args, **kwargs)))

    def add(self, person: _Person) -> _Person:
        if person.origin is None:
            if person.created_via == Source.IMPORT:
                person.origin = self.import_origin(person.created_at)
            elif person.created_via == Source.CLI:
                person.origin = self.operator("profile added by hand")
            else:
                person.origin = self.web(None, "/account/register")
        self.people.append(person)
        self.at(person.created_at, self._create, person)
        return person

    def subscribe(self, person: _Person, slug: str, when: datetime, origin: Origin,
                  confirmed: bool = False) -> None:
        self.at(when, self._subscribe, person, slug, origin, confirmed, when)

    def unsubscribe(self, person: _Person, slug: str, when: datetime, origin: Origin) -> None:
        self.at(when, self._unsubscribe, person, slug, origin, when)

    def opt_out(self, person: _Person, channel: Channel | None, when: datetime,
                origin: Origin) -> None:
        self.at(when, self._opt_out, person, channel, origin, when)

    def opt_in(self, person: _Person, channel: Channel | None, when: datetime,
               origin: Origin) -> None:
        self.at(when, self._opt_in, person, channel, origin, when)

    def address_event(self, address: Address, event: qrules.Event, when: datetime,
                      origin: Origin) -> None:
        self.at(when, self._address_event, address, event, origin, when)

    def set_status(self, address: Address, status: qrules.Status, reason: str,
                   when: datetime, origin: Origin) -> None:
        self.at(when, self._set_status, address, status, reason, origin, when)

    # --- the actions, run in time order ----------------------------------------------------

    def _create(self, person: _Person) -> None:
        assert person.origin is not None
        new = profiles.NewProfile(
            email=person.email, phone=person.phone, first_name=person.first_name,
            last_name=person.last_name, locale=person.locale, external_id=person.external_id,
            attributes=person.attributes or None, push_tokens=tuple(person.tokens))
        person.profile_id = profiles.create(self.conn, self.settings, new, person.origin,
                                            now=person.created_at)

    def _id(self, person: _Person) -> int:
        assert person.profile_id is not None, "a step ran before its profile was created"
        return person.profile_id

    def _subscribe(self, person: _Person, slug: str, origin: Origin, confirmed: bool,
                   when: datetime) -> None:
        consent.subscribe(self.conn, self._id(person), self.services[slug], origin,
                          confirmed=confirmed, now=when)

    def _unsubscribe(self, person: _Person, slug: str, origin: Origin, when: datetime) -> None:
        consent.unsubscribe(self.conn, self._id(person), self.services[slug], origin, now=when)

    def _opt_out(self, person: _Person, channel: Channel | None, origin: Origin,
                 when: datetime) -> None:
        consent.opt_out(self.conn, self._id(person), channel, origin, now=when)

    def _opt_in(self, person: _Person, channel: Channel | None, origin: Origin,
                when: datetime) -> None:
        consent.opt_in(self.conn, self._id(person), channel, origin, now=when)

    def _address_event(self, address: Address, event: qrules.Event, origin: Origin,
                       when: datetime) -> None:
        quarantine.apply(self.conn, address, event, origin, self.q, now=when)

    def _set_status(self, address: Address, status: qrules.Status, reason: str,
                    origin: Origin, when: datetime) -> None:
        quarantine.set_status(self.conn, address, status, reason, origin, self.q, now=when)

    def housekeeping_due(self, when: datetime, task: str) -> None:
        """The daily housekeeping (03:00 UTC) that first sees `task` due at `when`."""
        run = when.replace(hour=3, minute=0, second=0)
        self.due.setdefault(run if run >= when else run + DAY, set()).add(task)

    def _housekeeping(self, when: datetime, tasks: frozenset[str]) -> None:
        if "expiry" in tasks:
            consent.expire_subscriptions(self.conn, when)
        if "release" in tasks:
            quarantine.release_due(self.conn, self.q, when)

    # --- evidence of feedback --------------------------------------------------------------

    def _delivery(self, when: datetime) -> str:
        return f"newsletter-{when:%Y-%m}" if self.rng.random() < 0.8 else "order-confirmation"

    def _message_id(self, when: datetime, host: str) -> str:
        return f"<{when:%Y%m%d%H%M%S}.{self.rng.getrandbits(40):010X}@{host}>"

    def bounce(self, address: Address, when: datetime, reason: str, status: str,
               text: str, *, dsn: bool = True) -> None:
        domain = email_domain(address.key)
        mx = f"mx{self.rng.randint(1, 2)}.{domain}"
        evidence: dict[str, Any]
        if dsn:
            evidence = {"type": "dsn", "message_id": self._message_id(when, "mta.example.net"),
                        "final_recipient": f"rfc822; {address.value}", "action": "failed"
                        if status.startswith("5") else "delayed", "status": status,
                        "diagnostic_code": f"smtp; {text}", "remote_mta": f"dns; {mx}",
                        "delivery": self._delivery(when)}
        else:
            evidence = {"type": "smtp", "reply": text, "remote_mta": mx,
                        "delivery": self._delivery(when)}
        origin = Origin(source=Source.BOUNCE, actor="feedback", evidence=evidence)
        self.address_event(address, qrules.Failure(reason), when, origin)

    def user_unknown(self, address: Address, when: datetime) -> None:
        text = self.rng.choice((
            f"550 5.1.1 <{address.value}>: Recipient address rejected: User unknown",
            f"550 5.1.1 <{address.value}>... No such user",
            "550 5.1.1 The email account that you tried to reach does not exist"))
        self.bounce(address, when, "user_unknown", "5.1.1", text, dsn=self.rng.random() < 0.7)

    def invalid_domain(self, address: Address, when: datetime) -> None:
        domain = email_domain(address.key)
        evidence = {"type": "dsn", "message_id": self._message_id(when, "mta.example.net"),
                    "final_recipient": f"rfc822; {address.value}", "action": "failed",
                    "status": "5.1.2", "diagnostic_code": "X-Postfix; Host or domain name not "
                    f"found. Name service error for name={domain} type=MX: Host not found",
                    "reporting_mta": "dns; mta.example.net", "delivery": self._delivery(when)}
        origin = Origin(source=Source.BOUNCE, actor="feedback", evidence=evidence)
        self.address_event(address, qrules.Failure("invalid_domain"), when, origin)

    def soft_error(self, address: Address, when: datetime, reason: str) -> None:
        status, text = {
            "mailbox_full": self.rng.choice((
                ("4.2.2", "452 4.2.2 Mailbox full, try again later"),
                ("5.2.2", f"552 5.2.2 <{address.value}>: Mailbox quota exceeded"))),
            "account_disabled": ("5.2.1", "550 5.2.1 Mailbox disabled, not accepting messages"),
            "unreachable": ("4.4.7", "Delivery expired: no answer from host after 5 days"),
        }[reason]
        self.bounce(address, when, reason, status, text, dsn=self.rng.random() < 0.6)
        self.housekeeping_due(when + self.q.erroneous_reset_after, "release")
        self.housekeeping_due(when + self.q.mailbox_full_release_after, "release")

    def complaint(self, address: Address, when: datetime) -> Origin:
        evidence = {"type": "arf", "feedback_type": "abuse", "user_agent": "ExampleFBL/2.1",
                    "version": "1", "reporting_mta": "dns; fbl.example.com",
                    "arrival_date": when.isoformat(),
                    "original_message_id": self._message_id(when, "mailer.example.net"),
                    "delivery": f"newsletter-{when:%Y-%m}"}
        origin = Origin(source=Source.COMPLAINT, actor="feedback", evidence=evidence)
        self.address_event(address, qrules.Failure("complaint"), when, origin)
        return origin

    def sms_origin(self, person: _Person, text: str, when: datetime) -> Origin:
        return Origin(source=Source.SMS_KEYWORD, actor=f"sms:{SHORT_CODE}",
                      evidence={"type": "mo_sms", "from": person.e164, "to": SHORT_CODE,
                                "text": text, "received_at": when.isoformat()})

    def sms_stop(self, person: _Person, when: datetime) -> None:
        text = self.rng.choice(("STOP", "Stop", "STOPP", "stop please", "ABMELDEN")
                               if person.locale.startswith("de") else
                               ("STOP", "Stop", "STOP. Thank you", "unsubscribe"))
        origin = self.sms_origin(person, text, when)
        self.set_status(person.phone_address, qrules.Status.DENYLISTED, "sms_stop", when, origin)
        self.unsubscribe(person, SMS_ALERTS, when + SECOND, origin)

    def unregistered(self, token: profiles.PushToken, when: datetime) -> None:
        evidence: dict[str, Any] = (
            {"type": "push", "provider": "apns", "status": 410, "reason": "Unregistered"}
            if token.platform == "ios" else
            {"type": "push", "provider": "fcm", "status": 404, "error": "UNREGISTERED"})
        origin = Origin(source=Source.BOUNCE, actor=f"push:{evidence['provider']}",
                        evidence=evidence)
        self.address_event(normalize_push_token(token.token), qrules.Failure("user_unknown"),
                           when, origin)

    # --- newsletter and SMS sign-ups -------------------------------------------------------

    def newsletter_signup(self, person: _Person, when: datetime, *,
                          confirm: bool = True, at_creation: bool = False) -> datetime:
        """Sign up at `when`; returns the time the subscription became active (or pending)."""
        if at_creation and person.created_via == Source.IMPORT:
            # The CRM holds the double opt-in evidence; the import brings it in confirmed.
            self.subscribe(person, NEWSLETTER, when, self.import_origin(person.created_at),
                           confirmed=True)
            self.housekeeping_due(when + timedelta(days=NEWSLETTER_VALIDITY_DAYS), "expiry")
            return when
        wording = self.newsletter_wording(when)
        page = "/account/register" if at_creation else "/subscribe/newsletter"
        self.subscribe(person, NEWSLETTER, when, self.web(wording, page))
        if not confirm:
            return when
        confirmed_at = min(when + self.confirm_delay(), self.now - MINUTE)
        self.subscribe(person, NEWSLETTER, confirmed_at,
                       self.web(wording, "/confirm/newsletter"), confirmed=True)
        self.housekeeping_due(confirmed_at + timedelta(days=NEWSLETTER_VALIDITY_DAYS), "expiry")
        return confirmed_at

    def newsletter_unsubscribe(self, person: _Person, when: datetime) -> None:
        kind = self.weighted((("one_click", 45), ("page", 40), ("operator", 15)))
        if kind == "one_click":
            origin = self.one_click()
        elif kind == "page":
            origin = self.web(UNSUBSCRIBE_WORDING, "/unsubscribe/newsletter")
        else:
            origin = self.operator("asked by email to stop the newsletter")
        self.unsubscribe(person, NEWSLETTER, when, origin)

    def sms_signup(self, person: _Person, when: datetime, *, at_creation: bool = False) -> None:
        if at_creation and person.created_via == Source.IMPORT:
            origin = self.import_origin(person.created_at)
        elif at_creation or self.rng.random() < 0.7:
            origin = self.web(SMS_WORDING, "/subscribe/sms-alerts")
        else:
            keyword = "ANMELDEN" if person.locale.startswith("de") else "START"
            origin = self.sms_origin(person, keyword, when)
        self.subscribe(person, SMS_ALERTS, when, origin)

    # --- hand-made profiles that show each case --------------------------------------------

    def showcase(self) -> None:
        def person(key: str, first: str, last: str, locale: str, email: str | None,
                   created_days_ago: float, via: str, *, phone: bool = False,
                   tier: str = "silver") -> _Person:
            created = self.ago(created_days_ago)
            p = _Person(first, last, locale, created, via,
                        email=self.reserve_email(email) if email else None,
                        phone=self.unique_phone(locale) if phone else None,
                        attributes={"customer_since": f"{created:%Y-%m-%d}",
                                    "loyalty_tier": tier})
            self.examples[key] = p
            return self.add(p)

        # Subscribed to both services, reachable everywhere.
        jonas = person("subscribed", "Jonas", "Becker", "de-DE", "jonas.becker@example.de", 300,
                       Source.LANDING_PAGE, phone=True, tier="gold")
        jonas.tokens.append(self.push_token("ios"))
        self.newsletter_signup(jonas, jonas.created_at + 5 * SECOND, at_creation=True)
        self.sms_signup(jonas, self.ago(120))
        # Opted out of everything on the opt-out page.
        anna = person("opted_out", "Anna", "Schmidt", "de-DE", "anna.schmidt@example.de", 420,
                      Source.IMPORT)
        self.newsletter_signup(anna, self.ago(200))
        self.opt_out(anna, None, self.ago(12), self.web(OPTOUT_WORDING, "/optout"))
        # Opted out of email only, in the preference centre; SMS still reaches her.
        emily = person("channel_opted_out", "Emily", "Clarke", "en-GB", "emily.clarke@example.org",
                       250, Source.LANDING_PAGE, phone=True)
        self.newsletter_signup(emily, emily.created_at + 4 * SECOND, at_creation=True)
        self.sms_signup(emily, self.ago(100))
        self.opt_out(emily, Channel.EMAIL, self.ago(30),
                     self.web(PREFERENCES_WORDING, "/preferences"))
        # Signed up two days ago, never clicked the confirmation link.
        marie = person("pending", "Marie", "Keller", "de-AT", "marie.keller@mail.example.de", 2,
                       Source.LANDING_PAGE, tier="bronze")
        self.newsletter_signup(marie, marie.created_at + 3 * SECOND, confirm=False,
                               at_creation=True)
        # Imported 520 days ago with his newsletter consent; it ran out after a year.
        thomas = person("expired", "Thomas", "Braun", "de-DE", "thomas.braun@web.example.de",
                        520, Source.IMPORT)
        self.newsletter_signup(thomas, thomas.created_at + SECOND, at_creation=True)
        # Hard bounce: the mailbox no longer exists.
        lukas = person("quarantined", "Lukas", "Hofer", "de-AT", "lukas.hofer@example.com", 200,
                       Source.LANDING_PAGE)
        self.newsletter_signup(lukas, lukas.created_at + 6 * SECOND, at_creation=True)
        self.user_unknown(lukas.email_address, self.ago(40))
        # A full mailbox, counted once a day or more apart until it was quarantined.
        katrin = person("mailbox_full", "Katrin", "Vogel", "de-DE", "katrin.vogel@post.example.de",
                        600, Source.IMPORT)
        self.newsletter_signup(katrin, self.ago(150))
        spacing = self.q.soft_error_interval + 2 * HOUR
        last_error = self.ago(3)
        for i in range(self.q.soft_error_max):
            when = last_error - (self.q.soft_error_max - 1 - i) * spacing
            self.soft_error(katrin.email_address, when, "mailbox_full")
        # Two soft errors: erroneous, still sent to, back to valid after a quiet spell.
        paul = person("erroneous", "Paul", "Richter", "de-CH", "paul.richter@example.org", 90,
                      Source.LANDING_PAGE, tier="bronze")
        self.newsletter_signup(paul, paul.created_at + 2 * SECOND, at_creation=True)
        self.soft_error(paul.email_address, self.ago(5), "mailbox_full")
        self.soft_error(paul.email_address, self.ago(2), "unreachable")
        # Reported the newsletter as spam: denylisted and unsubscribed.
        sarah = person("denylisted", "Sarah", "Miller", "en-US", "sarah.miller@example.com", 330,
                       Source.LANDING_PAGE, phone=True)
        self.newsletter_signup(sarah, sarah.created_at + 5 * SECOND, at_creation=True)
        complained = self.ago(20)
        origin = self.complaint(sarah.email_address, complained)
        self.unsubscribe(sarah, NEWSLETTER, complained + SECOND, origin)
        # Texted STOP to the short code: the number is denylisted.
        felix = person("sms_stop", "Felix", "Wagner", "de-CH", "felix.wagner@example.de", 260,
                       Source.LANDING_PAGE, phone=True)
        self.sms_signup(felix, self.ago(200))
        self.sms_stop(felix, self.ago(25))
        # A seed mailbox of the marketing team: allowlisted, so it gets every send.
        seed_at = self.oldest + timedelta(hours=20)
        seed = _Person("Seed", "Mailbox", "de-DE", seed_at, Source.CLI,
                       email=self.reserve_email("seed-monitor@mail.example.org"),
                       external_id="SEED-0001", wants_external_id=False,
                       attributes={"role": "seed address"},
                       origin=Origin(source=Source.CLI, actor="os:jkoch",
                                     note="seed address of the marketing team"))
        self.examples["allowlisted"] = self.add(seed)
        self.set_status(seed.email_address, qrules.Status.ALLOWLISTED, "manual",
                        seed_at + MINUTE, Origin(source=Source.CLI, actor="os:jkoch",
                                                 note="seed address: receives every send"))
        self.subscribe(seed, NEWSLETTER, seed_at + 2 * MINUTE,
                       Origin(source=Source.CLI, actor="os:jkoch",
                              note="seed address, subscribed by the marketing team"),
                       confirmed=True)
        # The seed's two-profiles case: one person, two profiles, one address. She opted out
        # in the store (the CRM profile); the web shop profile still receives.
        julia_crm = person("two_profiles", "Julia", "Fischer", "de-DE",
                           "julia.fischer@example.com", 400, Source.IMPORT, phone=True)
        julia_crm.shared = True
        self.newsletter_signup(julia_crm, julia_crm.created_at + SECOND, at_creation=True)
        web_at = self.ago(150)
        julia_web = _Person("Julia", "Fischer", "de-DE", web_at, Source.LANDING_PAGE,
                            email="Julia.Fischer@example.com", shared=True,
                            attributes={"customer_since": f"{web_at:%Y-%m-%d}",
                                        "loyalty_tier": "bronze", "preferred_store": "online"})
        self.examples["two_profiles_other"] = self.add(julia_web)
        self.newsletter_signup(julia_web, julia_web.created_at + 7 * SECOND, at_creation=True)
        self.opt_out(julia_crm, None, self.ago(60), self.operator(
            "asked in the Berlin store to receive no more advertising"))
        # A false "user unknown" during the mail.example.com outage (release it in bulk).
        daniel = person("outage", "Daniel", "Krüger", "de-DE", f"daniel.krueger@{OUTAGE_DOMAIN}",
                        300, Source.LANDING_PAGE)
        self.newsletter_signup(daniel, daniel.created_at + 3 * SECOND, at_creation=True)
        self.user_unknown(daniel.email_address, self.outage[0] + timedelta(hours=7))

    # --- random profiles -------------------------------------------------------------------

    def random_person(self) -> _Person:
        rng = self.rng
        locale = self.weighted(LOCALES)
        german = locale.startswith("de")
        female = rng.random() < 0.5
        if german:
            first = rng.choice(DE_FEMALE if female else DE_MALE)
            last = rng.choice(DE_LAST)
        else:
            first = rng.choice(EN_FEMALE if female else EN_MALE)
            last = rng.choice(EN_LAST)
        via = self.weighted(((Source.IMPORT, 42), (Source.LANDING_PAGE, 50), (Source.CLI, 8)))
        if via == Source.IMPORT:
            batch = rng.choices(range(len(self.imports)),
                                weights=[40] + [60 / (len(self.imports) - 1)] * (
                                    len(self.imports) - 1))[0]
            created = self.imports[batch] + timedelta(milliseconds=rng.randint(0, 600_000))
            since = created - timedelta(days=rng.randint(0, 6 * 365))
        else:
            # More sign-ups lately: the base grows.
            created = self.now - timedelta(seconds=int(
                (729 * DAY).total_seconds() * rng.random() ** 1.3)) - HOUR
            since = created
        has_email = rng.random() < 0.96
        has_phone = not has_email or rng.random() < 0.5833
        email = None
        if has_email:
            domains = DE_DOMAINS if german else EN_DOMAINS
            domain = self.weighted(domains)
            if via == Source.IMPORT and rng.random() < 0.012:
                domain = rng.choice(DEFUNCT_DOMAINS)
            email = self.unique_email(first, last, domain)
        attributes: dict[str, Any] = {"customer_since": f"{since:%Y-%m-%d}",
                                      "loyalty_tier": self.weighted(TIERS)}
        if rng.random() < 0.7:
            attributes["birth_year"] = rng.randint(1948, 2006)
        if rng.random() < 0.5:
            attributes["preferred_store"] = rng.choice(STORES[locale])
        if rng.random() < 0.4:
            attributes["interests"] = sorted(rng.sample(INTERESTS, rng.randint(1, 3)))
        person = _Person(first, last, locale, created, via, email=email,
                         phone=self.unique_phone(locale) if has_phone else None,
                         attributes=attributes,
                         wants_external_id=via != Source.LANDING_PAGE or rng.random() < 0.7)
        if rng.random() < 0.22:
            person.tokens.append(self.push_token(rng.choice(("ios", "android"))))
            if rng.random() < 0.1:
                person.tokens.append(self.push_token(rng.choice(("ios", "android"))))
        return person

    def random_story(self, person: _Person, *, shared_optout: bool | None = None,
                     not_before: datetime | None = None) -> None:
        """Plan one random profile's life. `shared_optout` is for the two profiles of a shared
        address: True opts this one out of everything, False keeps it reachable."""
        rng = self.rng
        t0 = person.created_at
        last = self.now - HOUR
        self.add(person)

        # Opt-outs: about 5% of everything, 2% of email, 1% of SMS; 1% later opt back in.
        scope: str | None = None
        undone = False
        r = rng.random()
        if shared_optout is not None:
            scope = "all" if shared_optout else None
        elif r < 0.05:
            scope = "all"
        elif r < 0.071:
            scope = "email" if person.email else None
        elif r < 0.0877:
            scope = "sms" if person.phone else None
        elif r < 0.0977:
            scope, undone = rng.choice(("all", "email")), True
            scope = scope if scope == "all" or person.email else "all"
        optout_at = self.between(max(t0, not_before or t0) + DAY, last) if scope else None
        email_end = sms_end = self.now
        if optout_at is not None and scope is not None:
            channel = None if scope == "all" else Channel(scope)
            if undone:
                self.opt_out(person, channel, optout_at, self.optout_page(channel))
                back = self.between(optout_at + DAY, last)
                if back is not None:
                    self.opt_in(person, channel, back, rng.choice((
                        self.web(PREFERENCES_WORDING, "/preferences"),
                        self.operator("signed the consent form in the store again"))))
            else:
                kind = self.weighted((("page", 60), ("operator", 25), ("crm", 15)))
                if kind == "operator":
                    origin = self.operator("asked by phone to receive no more advertising")
                elif kind == "crm" and channel is None:
                    origin = Origin(source=Source.IMPORT, actor="os:jkoch",
                                    note="opt-out flag set in the CRM, nightly sync")
                else:
                    origin = self.optout_page(channel)
                self.opt_out(person, channel, optout_at, origin)
            if scope in ("all", "email"):
                email_end = optout_at
            if scope in ("all", "sms"):
                sms_end = optout_at

        trouble_at = self.email_trouble(person, email_end) if person.email else None
        if person.email:
            self.newsletter_story(person, min(last, trouble_at - DAY) if trouble_at else last,
                                  email_end)
        if person.phone:
            self.sms_story(person, sms_end)
        for token in person.tokens:
            if rng.random() < 0.05:
                when = self.between(t0 + 7 * DAY, last)
                if when is not None:
                    self.unregistered(token, when)

    def email_trouble(self, person: _Person, email_end: datetime) -> datetime | None:
        """Bounces for about 3% of the email addresses; returns the first one's time."""
        if person.shared:
            return None
        rng = self.rng
        address = person.email_address
        t0 = person.created_at
        end = min(email_end, self.now - HOUR)
        domain = email_domain(address.key)
        if domain in DEFUNCT_DOMAINS:
            when = self.between(t0 + HOUR, min(t0 + 20 * DAY, end))
            if when is not None:
                self.invalid_domain(address, when)
            return when
        lo_out, hi_out = self.outage
        if (domain == OUTAGE_DOMAIN and t0 < lo_out - 2 * DAY and end > hi_out
                and rng.random() < 0.08):
            when = self.between(lo_out, hi_out)
            assert when is not None
            self.user_unknown(address, when)
            return when
        kind = self.weighted((("user_unknown", 1.0), ("mailbox_full", 0.5),
                              ("mailbox_full_released", 0.3), ("erroneous", 0.5),
                              ("erroneous_reset", 0.5), (None, 97.2)))
        if kind is None:
            return None
        if kind == "user_unknown":
            when = self.between(t0 + 2 * DAY, end)
            if when is not None:
                self.user_unknown(address, when)
            return when
        recent = kind in ("mailbox_full", "erroneous")
        if recent and email_end < self.now:
            return None  # opted out: nothing was sent lately
        count = (self.q.soft_error_max if kind.startswith("mailbox_full")
                 else rng.randint(1, max(1, self.q.soft_error_max - 2)))
        window = (self.q.mailbox_full_release_after if kind.startswith("mailbox_full")
                  else self.q.erroneous_reset_after)
        if recent:
            last_error = self.between(self.now - window + DAY, self.now - HOUR)
        else:
            last_error = self.between(t0 + 60 * DAY, min(end, self.now - window - 2 * DAY))
        if last_error is None:
            return None
        times = [last_error]
        for _ in range(count - 1):
            times.append(times[-1] - self.q.soft_error_interval
                         - timedelta(hours=rng.randint(2, 60)))
        times.reverse()
        if times[0] < t0 + DAY:
            return None
        for i, when in enumerate(times):
            reason = ("mailbox_full" if kind.startswith("mailbox_full") or i == 0
                      else rng.choice(("mailbox_full", "unreachable", "account_disabled")))
            self.soft_error(address, when, reason)
        return times[0]

    def newsletter_story(self, person: _Person, hi: datetime, email_end: datetime) -> None:
        """About half subscribed, some pending, unsubscribed or expired, a few complaints.
        `hi` bounds sign-ups and confirmations (nothing is confirmed after a bounce)."""
        rng = self.rng
        t0 = person.created_at
        outcome = self.weighted((("none", 24), ("pending", 5), ("subscribed", 50),
                                 ("unsubscribed", 12), ("expired", 8.5), ("complaint", 0.5)))
        if outcome == "none":
            return
        validity = timedelta(days=NEWSLETTER_VALIDITY_DAYS)

        def signup(lo: datetime, top: datetime, confirm: bool = True) -> datetime | None:
            """Sign up in [lo, top]: at creation when that falls in the window, else later."""
            if lo <= t0 + HOUR and t0 + 2 * SECOND <= top and rng.random() < 0.65:
                return self.newsletter_signup(person, t0 + 2 * SECOND, confirm=confirm,
                                              at_creation=True)
            when = self.between(max(lo, t0 + HOUR), top)
            if when is None:
                return None
            return self.newsletter_signup(person, when, confirm=confirm)

        if outcome == "pending":
            if hi >= self.now - 2 * HOUR:  # no bounce in the way
                signup(max(t0, self.now - 20 * DAY), hi, confirm=False)
            return
        if outcome == "expired":
            signup(t0, min(hi, self.now - validity - 3 * DAY))
            return
        if outcome == "subscribed":
            if t0 < self.now - 420 * DAY and rng.random() < 0.4:
                # Subscribed, expired after a year, signed up again in the re-permission
                # campaign a few weeks later.
                first = signup(t0, min(hi, t0 + 60 * DAY))
                if first is not None:
                    again = self.between(first + validity + 3 * DAY,
                                         first + validity + 45 * DAY)
                    if again is not None and self.now - validity + 3 * DAY <= again <= hi:
                        self.newsletter_signup(person, again)
                    return
            signup(max(t0, self.now - validity + 3 * DAY), hi)
            return
        if outcome == "unsubscribed":
            confirmed = signup(t0, hi - 2 * DAY)
            if confirmed is not None:
                when = self.between(confirmed + DAY, min(confirmed + validity - DAY,
                                                         self.now - HOUR))
                if when is not None:
                    self.newsletter_unsubscribe(person, when)
            return
        # A spam complaint.
        if person.shared:
            return
        confirmed = signup(t0, min(hi, email_end) - 3 * DAY)
        if confirmed is not None:
            when = self.between(confirmed + DAY, min(confirmed + validity - DAY, email_end - HOUR,
                                                     self.now - HOUR))
            if when is not None:
                origin = self.complaint(person.email_address, when)
                self.unsubscribe(person, NEWSLETTER, when + SECOND, origin)

    def sms_story(self, person: _Person, sms_end: datetime) -> None:
        rng = self.rng
        t0 = person.created_at
        outcome = self.weighted((("none", 40), ("subscribed", 48), ("unsubscribed", 8),
                                 ("stop", 4)))
        if outcome == "none":
            return
        later = self.between(t0 + HOUR, self.now - 2 * DAY)
        if later is None or rng.random() < 0.5:
            when = t0 + 3 * SECOND
            self.sms_signup(person, when, at_creation=True)
        else:
            when = later
            self.sms_signup(person, when)
        if outcome == "unsubscribed":
            out = self.between(when + DAY, self.now - HOUR)
            if out is not None:
                self.unsubscribe(person, SMS_ALERTS, out, rng.choice((
                    self.web(UNSUBSCRIBE_WORDING, "/unsubscribe/sms-alerts"),
                    self.operator("asked on the hotline to stop the SMS alerts"))))
        elif outcome == "stop":
            out = self.between(when + DAY, min(sms_end, self.now) - HOUR)
            if out is not None:
                self.sms_stop(person, out)

    def pair(self) -> None:
        """Two profiles of one person sharing an email address; one of them opted out."""
        rng = self.rng
        first = self.random_person()
        while not first.email or first.created_at > self.now - 60 * DAY:
            first = self.random_person()
        first.shared = True
        second_at = self.between(first.created_at + 14 * DAY, self.now - 14 * DAY)
        assert second_at is not None
        email = first.email
        if rng.random() < 0.5:
            local, _, domain = email.partition("@")
            email = f"{local.capitalize()}@{domain}"  # typed differently, same matching key
        second = _Person(first.first_name, first.last_name, first.locale, second_at,
                         Source.LANDING_PAGE, email=email, shared=True,
                         attributes={"customer_since": f"{second_at:%Y-%m-%d}",
                                     "loyalty_tier": "bronze", "preferred_store": "online"},
                         wants_external_id=rng.random() < 0.5)
        opted = rng.random() < 0.5
        self.random_story(first, shared_optout=opted, not_before=second_at)
        self.random_story(second, shared_optout=not opted)

    # --- the whole demo --------------------------------------------------------------------

    def plan(self, total: int) -> None:
        self.showcase()
        pairs = max(2, total // 400) - 1  # the showcase has one pair already
        remaining = total - len(self.people)
        pair_every = max(1, remaining // (pairs + 1))
        made = 0
        while len(self.people) < total:
            made += 1
            if pairs and made % pair_every == 0 and total - len(self.people) >= 2:
                self.pair()
                pairs -= 1
            else:
                self.random_story(self.random_person())
        # CRM numbers in the order the profiles came in.
        number = 0
        for person in sorted(self.people, key=lambda p: p.created_at):
            if person.external_id is None and person.wants_external_id:
                number += 1
                person.external_id = f"CRM-{number:06d}"
        for day, tasks in sorted(self.due.items()):
            if day <= self.now:
                self.at(day, self._housekeeping, day, frozenset(tasks))

    def run(self) -> None:
        self.services[NEWSLETTER] = consent.create_service(
            self.conn, NEWSLETTER, Channel.EMAIL, "Newsletter: offers and news, monthly",
            double_opt_in=True, validity_days=NEWSLETTER_VALIDITY_DAYS, now=self.start)
        self.services[SMS_ALERTS] = consent.create_service(
            self.conn, SMS_ALERTS, Channel.SMS, "SMS alerts: flash sales and store events",
            now=self.start + HOUR)
        self.steps.sort(key=lambda step: (step[0], step[1]))
        for _when, _seq, action in self.steps:
            action()
        self._housekeeping(self.now, frozenset({"expiry", "release"}))

    def refs(self) -> dict[str, str]:
        refs: dict[str, str] = {}
        for name, person in self.examples.items():
            if name == "sms_stop":
                refs[name] = person.e164
            elif person.shared or person.email is None:
                assert person.external_id is not None
                refs[name] = person.external_id
            else:
                refs[name] = person.email
        return refs


def _count(conn: sa.Connection, stmt: sa.Select[Any]) -> int:
    return int(conn.execute(stmt).scalar_one())


def summarize(conn: sa.Connection, examples: dict[str, str]) -> DemoSummary:
    """Count what the database holds, in the terms of DemoSummary."""
    channel_only = (sa.select(sa.func.count(sa.distinct(opt_outs.c.profile_id)))
                    .where(opt_outs.c.scope != "all",
                           ~opt_outs.c.profile_id.in_(sa.select(opt_outs.c.profile_id)
                                                      .where(opt_outs.c.scope == "all"))))

    def status(value: str) -> sa.Select[Any]:
        return (sa.select(sa.func.count()).select_from(quarantine_table)
                .where(quarantine_table.c.status == value))

    return DemoSummary(
        profiles=_count(conn, sa.select(sa.func.count()).select_from(profiles_table)),
        opted_out=_count(conn, sa.select(sa.func.count()).select_from(opt_outs)
                         .where(opt_outs.c.scope == "all")),
        channel_opted_out=_count(conn, channel_only),
        quarantined=_count(conn, status(qrules.Status.QUARANTINED.value)),
        denylisted=_count(conn, status(qrules.Status.DENYLISTED.value)),
        services=[s["slug"] for s in consent.list_services(conn)],
        shared_addresses=len(conn.execute(DUPLICATE_ADDRESSES).all()),
        examples=dict(examples),
    )


def build_demo(engine: sa.Engine, settings: Settings, *, profiles: int = 3000,
               seed: int = 7) -> DemoSummary:
    """Fill an empty, migrated database with `profiles` demo profiles (deterministic for a
    seed) in one transaction; raise ConsentryError if it already holds profiles."""
    if profiles < MIN_PROFILES:
        raise ConsentryError(f"the demo needs at least {MIN_PROFILES} profiles, not {profiles}")
    now = utcnow().replace(microsecond=0)
    with engine.begin() as conn:
        if _count(conn, sa.select(sa.func.count()).select_from(profiles_table)):
            raise ConsentryError("the database already holds profiles: the demo fills an empty "
                                 "database only (use a new database file)")
        builder = _Builder(conn, settings, random.Random(seed), now)
        builder.plan(profiles)
        builder.run()
        return summarize(conn, builder.refs())
