"""Address normalization and matching keys (domain/addresses.py, domain.md section 7), and the
email fast path checked against email-validator with hypothesis."""

from __future__ import annotations

import string

import pytest
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import example, given
from hypothesis import strategies as st

from consentry.domain.addresses import (
    Address,
    _fast_email,
    ascii_lower,
    email_domain,
    guess_channel,
    normalize,
    normalize_email,
    normalize_phone,
    normalize_push_token,
)
from consentry.domain.channels import Channel
from consentry.domain.errors import ConsentryError, InvalidAddress

# --- Email ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value", "key"), [
    # Trimmed; the domain lowercased; the local part kept as given for sending.
    ("  Max.Mustermann@Example.DE \t", "Max.Mustermann@example.de", "max.mustermann@example.de"),
    # Dots and +tags are significant: never stripped (not even for Gmail).
    ("first.last+news@GMAIL.com", "first.last+news@gmail.com", "first.last+news@gmail.com"),
    ("firstlast@gmail.com", "firstlast@gmail.com", "firstlast@gmail.com"),
    # IDNA-encoded domain, in both the value and the key.
    ("user@Bücher.Example", "user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
    ("kontakt@MÜNCHEN.de", "kontakt@xn--mnchen-3ya.de", "kontakt@xn--mnchen-3ya.de"),
    # NFC local part: a decomposed é (e + U+0301) becomes the composed one.
    ("Jose\u0301@Example.com", "Jos\u00e9@example.com", "jos\u00e9@example.com"),
    # The key lowercases A-Z only; other letters of an internationalized local part stay.
    ("ÄRGER@example.com", "ÄRGER@example.com", "Ärger@example.com"),
    # Printable specials of RFC 5322 atext.
    ("o'brien!#$%&*/=?^_`{|}~-@example.org", "o'brien!#$%&*/=?^_`{|}~-@example.org",
     "o'brien!#$%&*/=?^_`{|}~-@example.org"),
])
def test_email_normalization(raw: str, value: str, key: str) -> None:
    assert normalize_email(raw) == Address(Channel.EMAIL, value, key)
    assert normalize("email", raw) == normalize_email(raw)


def test_same_person_same_key() -> None:
    spellings = ["Max@Example.de", "max@example.DE", " MAX@EXAMPLE.DE ", "mAx@exAmple.de"]
    assert {normalize_email(s).key for s in spellings} == {"max@example.de"}
    assert len({normalize_email(s).value for s in spellings}) == 4  # each sent as given
    assert normalize_email("max+a@example.de").key != normalize_email("max@example.de").key
    assert normalize_email("m.ax@example.de").key != normalize_email("max@example.de").key


@pytest.mark.parametrize(("raw", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("no-at-sign", "must have an @-sign"),
    ("two@@example.com", "invalid characters"),
    ("@example.com", "something before the @-sign"),
    ("user@", "something after the @-sign"),
    ("user@localhost", "should have a period"),
    ("a..b@example.com", "two periods in a row"),
    (".ab@example.com", "cannot start with a period"),
    ("ab.@example.com", "period immediately before the @-sign"),
    ("user@-example.com", "hyphen immediately after the @-sign"),
    ("user@example-.com", "period and a hyphen next to each other"),
    ("user@example.com-", "cannot end with a hyphen"),
    ("user@example..com", "two periods in a row"),
    ("user@example.123", "not within a valid top-level domain"),
    ("user@mail.test", "special-use or reserved name"),
    ("user@router.local", "special-use or reserved name"),
    ("user name@example.com", "invalid characters"),
    ("user@" + "a" * 64 + ".com", "periods cannot be separated by so many characters"),
])
def test_invalid_emails_say_why(raw: str, why: str) -> None:
    with pytest.raises(InvalidAddress, match="invalid email address") as caught:
        normalize_email(raw)
    assert why in caught.value.why
    assert caught.value.channel == "email" and caught.value.value == raw
    assert isinstance(caught.value, ConsentryError)


def test_email_domain_and_ascii_lower() -> None:
    assert email_domain(normalize_email("x@Sub.Example.COM").key) == "sub.example.com"
    assert ascii_lower("ÄBC-Ü") == "Äbc-Ü"


# --- The fast path against email-validator -------------------------------------------------------

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
LDH = string.ascii_letters + string.digits + "-"


def reference(text: str) -> Address | None:
    """email-validator's normalization, as the slow path uses it; None: rejected."""
    try:
        info = validate_email(text.strip(), check_deliverability=False)
    except EmailNotValidError:
        return None
    return Address(Channel.EMAIL, f"{info.local_part}@{info.ascii_domain}",
                   f"{ascii_lower(info.local_part)}@{info.ascii_domain}")


def mixed_case(words: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(words, st.randoms(use_true_random=False)).map(
        lambda wr: "".join(c.upper() if wr[1].random() < 0.5 else c for c in wr[0]))


local_parts = st.one_of(
    # Dot-atoms, with empty atoms giving leading, trailing and doubled dots.
    st.lists(st.text(ATEXT, max_size=12), min_size=1, max_size=5).map(".".join),
    # Around the 64-character limit.
    st.integers(60, 70).flatmap(lambda n: st.text(ATEXT, min_size=n, max_size=n)),
    # Digits only, hyphens only, one character.
    st.text(string.digits + "-", min_size=1, max_size=6),
    # Not atext: spaces, quotes, commas, non-ASCII.
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8),
)
labels = st.one_of(
    st.text(LDH, min_size=1, max_size=12),  # hyphens at either end, inside, doubled
    st.text(string.digits, min_size=1, max_size=4),
    st.from_regex(r"[xX][nN]--[a-z0-9]{1,12}", fullmatch=True),
    st.sampled_from(["xn--bcher-kva", "xn--mnchen-3ya", "ab--cd", "xn--", "a-b", "bücher"]),
    st.integers(60, 66).map(lambda n: "a" * n),
)
tlds = st.one_of(
    mixed_case(st.sampled_from(["com", "de", "org", "museum", "co", "arpa", "invalid", "local",
                                "localhost", "onion", "test", "example", "internal"])),
    st.text(string.ascii_letters, min_size=1, max_size=8),
    st.text(string.digits, min_size=1, max_size=3),
    st.sampled_from(["xn--p1ai", "XN--P1AI", "c0m", "a1", "1a", "x-y"]),
    labels,
)
domains = st.builds(lambda ls, tld: ".".join([*ls, tld]),
                    st.lists(labels, min_size=0, max_size=4), tlds)


def long_domain(length: int) -> str:
    """A domain of exactly `length` characters: 63-character labels then a filler and .com."""
    parts, left = [], length - len(".com")
    while left > 64:
        parts.append("a" * 63)
        left -= 64
    parts.append("b" * max(left, 1))
    return ".".join(parts) + ".com"


long_addresses = st.builds(
    lambda local_len, dom_len: "x" * local_len + "@" + long_domain(dom_len),
    st.integers(1, 66), st.integers(180, 256))
mailbox_names = mixed_case(st.sampled_from(CASE_INSENSITIVE_MAILBOX_NAMES))

emails = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", local_parts, domains),
    st.builds(lambda local, domain: f"{local}@{domain}", mixed_case(st.text(ATEXT, min_size=1,
                                                                              max_size=10)),
              mixed_case(st.sampled_from(["example.com", "Example.DE", "mail.co.uk"]))),
    long_addresses,
    mailbox_names.map(lambda name: f"{name}@example.com"),
    st.text(max_size=30),  # anything at all
)


def known_fast_path_bug(text: str) -> bool:
    """See test_fast_path_lowercases_rfc2142_mailbox_names: reported, not ours to fix here."""
    return text.partition("@")[0].lower() in CASE_INSENSITIVE_MAILBOX_NAMES


@given(emails)
@example("x" * 64 + "@example.com")
@example("x" * 65 + "@example.com")
@example("x@" + long_domain(253))
@example("x@" + long_domain(254))
@example("x" * 64 + "@" + long_domain(189))  # 254 in all
@example("x" * 64 + "@" + long_domain(190))  # 255
@example("user@xn--bcher-kva.example")
@example("user@Example.TEST")
@example("user@example.c0m")
@example("user@ab--cd.com")
def test_fast_path_agrees_with_email_validator(text: str) -> None:
    """Whatever the fast path accepts, email-validator accepts and normalizes the same way."""
    fast = _fast_email(text)
    if fast is None or known_fast_path_bug(text):
        return
    assert reference(text) == fast


@given(emails)
@example(" Max@Example.com ")
@example("x" * 65 + "@example.com")
def test_normalize_email_is_email_validator(text: str) -> None:
    """Fast path or slow path, normalize_email gives what email-validator gives, and rejects
    what it rejects."""
    if known_fast_path_bug(text.strip()):
        return
    expected = reference(text)
    if expected is None:
        with pytest.raises(InvalidAddress):
            normalize_email(text)
    else:
        assert normalize_email(text) == expected


@given(st.builds(lambda local, domain: f"{local}@{domain}",
                 st.lists(st.text(ATEXT, min_size=1, max_size=10), min_size=1, max_size=3)
                 .map(".".join),
                 mixed_case(st.sampled_from(["example.com", "mail.example.org", "a-b.de"]))))
def test_plain_addresses_take_the_fast_path(text: str) -> None:
    """The common case really is fast: plain ASCII addresses never need email-validator."""
    if len(text.partition("@")[0]) <= 64:
        assert _fast_email(text) is not None


@pytest.mark.parametrize("text", ["INFO@example.com", "Postmaster@example.com"])
def test_fast_path_lowercases_rfc2142_mailbox_names(text: str) -> None:
    assert _fast_email(text) == reference(text)


# --- Phone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "e164"), [
    ("+4915123456789", "+4915123456789"),
    ("+49 151 23456789", "+4915123456789"),
    ("0151 23456789", "+4915123456789"),  # national, default region DE
    ("(0151) 234-56789", "+4915123456789"),
    ("0049 151 23456789", "+4915123456789"),  # 00 international prefix
    ("0049151/23456789", "+4915123456789"),
    ("+49 (0)151 23456789", "+4915123456789"),
    (" +43 664 1234567 ", "+436641234567"),
    ("0043 664 1234567", "+436641234567"),
    ("+1 (202) 555-0143", "+12025550143"),
])
def test_phone_normalization(raw: str, e164: str) -> None:
    assert normalize_phone(raw) == Address(Channel.SMS, e164, e164)
    assert normalize("sms", raw) == normalize_phone(raw)


def test_phone_default_region() -> None:
    assert normalize_phone("020 7946 0958", "GB").value == "+442079460958"
    assert normalize_phone("0664 1234567", "AT").value == "+436641234567"
    # An international number ignores the default region.
    assert normalize_phone("+4915123456789", "GB").value == "+4915123456789"
    assert normalize("sms", "0151 23456789", "DE").value == "+4915123456789"


@pytest.mark.parametrize(("raw", "why"), [
    ("", "empty"),
    ("  ", "empty"),
    ("12", "not a valid phone number"),
    ("+49 12", "not a valid phone number"),
    ("+49 151 2345 6789 0", "not a valid phone number"),
    ("+999 1234567", "not a phone number"),  # no such country code
    ("hello", "not a phone number"),
    ("+", "not a phone number"),
])
def test_invalid_phones_say_why(raw: str, why: str) -> None:
    with pytest.raises(InvalidAddress, match="invalid sms address") as caught:
        normalize_phone(raw)
    assert why in caught.value.why
    assert caught.value.value == raw


@given(st.text(max_size=25), st.sampled_from(["DE", "AT", "GB", "US", "FR"]))
def test_phone_is_e164_or_rejected(raw: str, region: str) -> None:
    """Any input: either a clear InvalidAddress, or an E.164 number that normalizes to itself."""
    try:
        address = normalize_phone(raw, region)
    except InvalidAddress as exc:
        assert exc.channel == "sms" and exc.why
        return
    assert address.value == address.key
    assert address.value.startswith("+") and address.value[1:].isdigit()
    assert 8 <= len(address.value) <= 16
    assert normalize_phone(address.value, "DE") == address


# --- Push tokens and guessing the channel --------------------------------------------------------


def test_push_tokens() -> None:
    token = "fcm:APA91bH-abcdefgh_0123456789"
    assert normalize_push_token(f"  {token}\n") == Address(Channel.PUSH, token, token)
    assert normalize("push", token).key == token  # case matters for tokens
    for bad in ["short", "with space in it", "x" * 4097, "tökenwithumlaut"]:
        with pytest.raises(InvalidAddress, match="invalid push address"):
            normalize_push_token(bad)


@pytest.mark.parametrize(("raw", "channel"), [
    ("max@example.de", Channel.EMAIL),
    (" Max@Example.de ", Channel.EMAIL),
    ("+49 151 23456789", Channel.SMS),
    ("0151/23456789", Channel.SMS),
    ("(0151) 234-56789", Channel.SMS),
    ("fcm-token-0123456789", Channel.PUSH),
    ("0123456789abcdef0123456789abcdef", Channel.PUSH),  # hex APNs token: has letters
])
def test_guess_channel(raw: str, channel: Channel) -> None:
    assert guess_channel(raw) is channel


def test_unknown_channel() -> None:
    with pytest.raises(ValueError, match="fax"):
        normalize("fax", "x@example.com")
