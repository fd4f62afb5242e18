"""The quarantine state machine (domain/quarantine.py, domain.md section 4) as properties over
random event histories and random thresholds, plus worked examples of Adobe's defaults."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from hypothesis import assume, given
from hypothesis import strategies as st

from consentry.domain.quarantine import (
    BLOCKING,
    REASON_CLASS,
    VALID,
    Entry,
    Event,
    Failure,
    FailureClass,
    QuarantineSettings,
    Release,
    SetStatus,
    Status,
    Success,
    Tick,
    describe,
    release_cutoffs,
    release_due,
    transition,
)

T0 = datetime(2026, 3, 1, 8, tzinfo=UTC)
US = timedelta(microseconds=1)
DEFAULTS = QuarantineSettings()

HARD = sorted(r for r, c in REASON_CLASS.items() if c is FailureClass.HARD)
SOFT = sorted(r for r, c in REASON_CLASS.items() if c is FailureClass.SOFT)
COUNTING_SOFT = [r for r in SOFT if r != "refused"]
IGNORED = sorted(r for r, c in REASON_CLASS.items() if c is FailureClass.IGNORED)

# --- Strategies ----------------------------------------------------------------------------------

durations = st.timedeltas(min_value=US, max_value=timedelta(days=45))

settings_st = st.one_of(
    st.just(DEFAULTS),
    st.builds(QuarantineSettings, soft_error_max=st.integers(1, 8),
              soft_error_interval=durations, erroneous_reset_after=durations,
              mailbox_full_release_after=durations),
)

failures = st.builds(
    Failure,
    reason=st.sampled_from([*sorted(REASON_CLASS), "something_new"]),
    klass=st.none() | st.sampled_from(list(FailureClass)),
)
# Failures, successes and time passing: what the world does to an address (no operator).
world_events: st.SearchStrategy[Event] = st.one_of(
    failures, st.just(Success()), st.just(Tick()))
statuses = st.sampled_from([s for s in Status if s is not Status.VALID])
set_statuses = st.builds(SetStatus, status=st.sampled_from(list(Status)),
                         reason=st.sampled_from(["manual", "import", "complaint", "sms_stop",
                                                 "user_unknown", "mailbox_full"]))
any_events: st.SearchStrategy[Event] = st.one_of(
    world_events, set_statuses, st.just(Release()))


@st.composite
def gaps(draw: st.DrawFn, settings: QuarantineSettings) -> timedelta:
    """Time between two events, often right at (or a microsecond around) a threshold."""
    edge = draw(st.sampled_from([settings.soft_error_interval, settings.erroneous_reset_after,
                                 settings.mailbox_full_release_after]))
    return draw(st.one_of(
        st.just(timedelta(0)),
        st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)),
        st.sampled_from([edge - US, edge, edge + US]),
    ))


History = tuple[QuarantineSettings, list[tuple[timedelta, Event]]]


def histories(events: st.SearchStrategy[Event], max_size: int = 25,
              ) -> st.SearchStrategy[History]:
    """Random thresholds and a random sequence of (gap, event) under them."""
    @st.composite
    def draw_history(draw: st.DrawFn) -> History:
        settings = draw(settings_st)
        return settings, draw(st.lists(st.tuples(gaps(settings), events), max_size=max_size))

    return draw_history()


def play(entry: Entry | None, steps: list[tuple[timedelta, Event]], settings: QuarantineSettings,
         start: datetime = T0) -> Iterator[tuple[datetime, Entry, Event, Entry]]:
    """(now, before, event, after) for each step, time moving forward by each gap."""
    now, current = start, entry or VALID
    for gap, event in steps:
        now += gap
        after = transition(current, event, now, settings)
        yield now, current, event, after
        current = after


def settle(entry: Entry, now: datetime, settings: QuarantineSettings) -> Entry:
    """The entry with the time-based releases due by `now` applied (what any event sees first)."""
    return transition(entry, Tick(), now, settings)


def end_of(entry: Entry | None, steps: list[tuple[timedelta, Event]],
           settings: QuarantineSettings) -> tuple[datetime, Entry]:
    """(the time of the last step, the entry after it)."""
    end = (T0, entry or VALID)
    for now, _before, _event, after in play(entry, steps, settings):
        end = (now, after)
    return end


# --- Properties ----------------------------------------------------------------------------------


@given(histories(any_events), st.data())
def test_allowlisted_only_changes_by_set_status(
        history: History,
        data: st.DataObject) -> None:
    """Whatever happened before, once allowlisted no failure, success or tick changes it."""
    settings, before_steps = history
    now, entry = end_of(None, before_steps, settings)
    entry = transition(entry, SetStatus(Status.ALLOWLISTED, "manual"), now, settings)
    assert entry.status is Status.ALLOWLISTED
    steps = data.draw(st.lists(st.tuples(gaps(settings), world_events), max_size=30))
    for _now, before, _event, after in play(entry, steps, settings, start=now):
        assert after.status is Status.ALLOWLISTED
        assert (after.reason, after.error_count) == (before.reason, before.error_count)


@given(histories(any_events), st.data(),
       st.sampled_from([SetStatus(Status.DENYLISTED, "manual"),
                        SetStatus(Status.DENYLISTED, "sms_stop"), Failure("complaint"),
                        Failure("user_unknown", FailureClass.COMPLAINT)]))
def test_denylisted_is_never_released_by_time(
        history: History,
        data: st.DataObject, how: Event) -> None:
    settings, before_steps = history
    now, entry = end_of(None, before_steps, settings)
    assume(entry.status is not Status.ALLOWLISTED or isinstance(how, SetStatus))
    entry = transition(entry, how, now, settings)
    assert entry.status is Status.DENYLISTED
    steps = data.draw(st.lists(st.tuples(gaps(settings), world_events), max_size=30))
    for at, _before, _event, after in play(entry, steps, settings, start=now):
        assert after.status is Status.DENYLISTED
        assert not release_due(after, at + timedelta(days=3650), settings)


@given(histories(any_events, max_size=40))
def test_one_event_at_a_time(
        history: History) -> None:
    """Per step: soft errors inside the interval never count, a count grows by one at most,
    hard errors quarantine at once, successes clear soft errors, ignored reasons and refusals
    change nothing, complaints denylist, and only an operator (SetStatus, Release) changes an
    allowlisted address."""
    settings, steps = history
    for now, before, event, after in play(None, steps, settings):
        current = settle(before, now, settings)
        assert after.error_count <= current.error_count + 1
        if isinstance(event, Failure):
            check_failure(current, event, now, after, settings)
        elif isinstance(event, Success):
            if current.status is Status.ERRONEOUS:
                assert (after.status, after.error_count, after.last_counted_at) == (
                    Status.VALID, 0, None)
            else:
                assert after == current
        elif isinstance(event, Tick):
            assert after == current
        elif isinstance(event, Release):
            assert after.status is Status.VALID and after.error_count == 0
        elif isinstance(event, SetStatus):
            assert after.status is event.status
            if event.status is not Status.VALID:
                assert after.reason == event.reason
                assert after.error_count == current.error_count


def check_failure(current: Entry, failure: Failure, now: datetime, after: Entry,
                  settings: QuarantineSettings) -> None:
    klass = failure.effective_class
    if klass is FailureClass.IGNORED:
        assert after == current
        return
    # Every other failure is seen: the error dates move, whatever else happens.
    assert after.last_error_at == now
    assert after.first_error_at == (current.first_error_at or now)
    if current.status is Status.ALLOWLISTED:
        assert (after.status, after.reason, after.error_count) == (
            current.status, current.reason, current.error_count)
    elif klass is FailureClass.COMPLAINT:
        assert after.status is Status.DENYLISTED
        if current.status is not Status.DENYLISTED:
            assert after.reason == failure.reason
    elif current.status in BLOCKING:
        # Already not sent to. (Which reason a hard error leaves on a mailbox-full quarantine
        # is test_hard_error_on_a_mailbox_full_quarantine_is_permanent's business.)
        assert after.status is current.status
        if not (klass is FailureClass.HARD and current.reason == "mailbox_full"):
            assert (after.reason, after.error_count) == (current.reason, current.error_count)
    elif klass is FailureClass.HARD:
        assert (after.status, after.reason, after.error_count) == (
            Status.QUARANTINED, failure.reason, current.error_count + 1)
    elif failure.reason == "refused":
        assert (after.status, after.reason, after.error_count) == (
            current.status, current.reason, current.error_count)
    elif (current.last_counted_at is not None
          and now - current.last_counted_at < settings.soft_error_interval):
        # Inside the interval: not significant, not counted.
        assert (after.status, after.error_count) == (current.status, current.error_count)
    else:
        assert after.error_count == current.error_count + 1
        assert after.last_counted_at == now
        expected = (Status.QUARANTINED if after.error_count >= settings.soft_error_max
                    else Status.ERRONEOUS)
        assert (after.status, after.reason) == (expected, failure.reason)


@given(histories(any_events, max_size=40))
def test_time_releases_happen_exactly_when_due(
        history: History) -> None:
    """Erroneous: valid at exactly last_error_at + erroneous_reset_after, not a microsecond
    earlier. Mailbox-full quarantine: likewise with mailbox_full_release_after. Nothing else is
    ever released by time."""
    settings, steps = history
    for now, _before, _event, entry in play(None, steps, settings):
        if entry.status is Status.ERRONEOUS and entry.last_error_at is not None:
            due = entry.last_error_at + settings.erroneous_reset_after
        elif (entry.status is Status.QUARANTINED and entry.reason == "mailbox_full"
              and (entry.last_error_at or entry.status_at)):
            # From the later of the last error and the quarantine itself.
            since = max(t for t in (entry.last_error_at, entry.status_at) if t is not None)
            due = since + settings.mailbox_full_release_after
        else:
            assert settle(entry, now + timedelta(days=3650), settings) == entry
            continue
        assert settle(entry, due - US, settings) == entry
        released = settle(entry, due, settings)
        assert (released.status, released.reason, released.error_count) == (
            Status.VALID, None, 0)
        assert released.status_at == due
        assert released.last_error_at == entry.last_error_at  # the history stays
        # The set-based SQL filter of the periodic task agrees with the rule at the boundary.
        erroneous_cutoff, mailbox_cutoff = release_cutoffs(due, settings)
        clock = (entry.last_error_at if entry.status is Status.ERRONEOUS else since)
        cutoff = erroneous_cutoff if entry.status is Status.ERRONEOUS else mailbox_cutoff
        assert clock is not None and clock <= cutoff
        assert not clock <= release_cutoffs(due - US, settings)[
            0 if entry.status is Status.ERRONEOUS else 1]


@given(settings_st, st.data())
def test_soft_errors_count_up_to_the_maximum(settings: QuarantineSettings,
                                             data: st.DataObject) -> None:
    """soft_error_max significant soft errors, each at least the interval after the previous
    one and before the erroneous state resets: quarantined with the last error's reason."""
    assume(settings.soft_error_interval < settings.erroneous_reset_after)
    reasons = data.draw(st.lists(st.sampled_from(COUNTING_SOFT),
                                 min_size=settings.soft_error_max,
                                 max_size=settings.soft_error_max))
    entry, now = VALID, T0
    for n, reason in enumerate(reasons, start=1):
        if n > 1:
            now += data.draw(st.timedeltas(min_value=settings.soft_error_interval,
                                           max_value=settings.erroneous_reset_after - US))
        entry = transition(entry, Failure(reason), now, settings)
        assert entry.error_count == n
        assert entry.status is (Status.QUARANTINED if n == settings.soft_error_max
                                else Status.ERRONEOUS)
    assert entry.reason == reasons[-1]


@given(settings_st, st.lists(st.tuples(st.timedeltas(min_value=timedelta(0),
                                                     max_value=timedelta(days=400)),
                                       st.sampled_from([Failure("refused"), Success(), Tick(),
                                                        Failure("autoreply")])), max_size=40))
def test_refused_never_quarantines(settings: QuarantineSettings,
                                   steps: list[tuple[timedelta, Event]]) -> None:
    """5.7.x refusals are the sender's problem: any number of them, at any pace, leaves the
    address valid and its count at zero."""
    for _now, _before, _event, after in play(None, steps, settings):
        assert (after.status, after.error_count) == (Status.VALID, 0)


@given(histories(any_events), st.sampled_from(IGNORED))
def test_ignored_reasons_change_nothing(
        history: History, reason: str) -> None:
    settings, steps = history
    now, entry = end_of(None, steps, settings)
    assert transition(entry, Failure(reason), now, settings) == settle(entry, now, settings)


# --- Adobe's defaults, worked through ------------------------------------------------------------

DAY = timedelta(days=1)


def apply_all(*steps: tuple[timedelta, Event], settings: QuarantineSettings = DEFAULTS,
              ) -> Entry:
    return end_of(None, list(steps), settings)[1]


def test_default_thresholds_are_adobes() -> None:
    adobe = QuarantineSettings(
        soft_error_max=5, soft_error_interval=timedelta(days=1),
        erroneous_reset_after=timedelta(days=10), mailbox_full_release_after=timedelta(days=30))
    assert adobe == DEFAULTS


def test_five_soft_errors_a_day_apart_quarantine() -> None:
    steps = [(timedelta(0) if i == 0 else DAY, Failure("unreachable")) for i in range(5)]
    assert describe(apply_all(*steps[:4])) == "erroneous(4)"
    entry = apply_all(*steps)
    assert (entry.status, entry.reason, entry.error_count) == (
        Status.QUARANTINED, "unreachable", 5)


def test_a_soft_error_within_a_day_does_not_count() -> None:
    first = (timedelta(0), Failure("unreachable"))
    assert apply_all(first, (DAY - US, Failure("unreachable"))).error_count == 1
    assert apply_all(first, (DAY, Failure("unreachable"))).error_count == 2
    # Many errors within the day: still one.
    assert apply_all(first, *[(timedelta(hours=1), Failure("unreachable"))] * 23).error_count == 1


def test_erroneous_resets_after_ten_days_or_a_success() -> None:
    entry = apply_all((timedelta(0), Failure("account_disabled")))
    assert entry.status is Status.ERRONEOUS
    assert transition(entry, Tick(), T0 + timedelta(days=10) - US, DEFAULTS) == entry
    assert transition(entry, Tick(), T0 + timedelta(days=10), DEFAULTS).status is Status.VALID
    after_success = transition(entry, Success(), T0 + timedelta(hours=1), DEFAULTS)
    assert (after_success.status, after_success.error_count) == (Status.VALID, 0)
    # The history of errors stays on the entry; only the counter starts again.
    assert after_success.first_error_at == after_success.last_error_at == T0


def test_mailbox_full_quarantine_is_released_after_thirty_days() -> None:
    steps = [(timedelta(0) if i == 0 else DAY, Failure("mailbox_full")) for i in range(5)]
    entry = apply_all(*steps)
    last = T0 + 4 * DAY
    assert (entry.status, entry.reason, entry.last_error_at) == (
        Status.QUARANTINED, "mailbox_full", last)
    assert transition(entry, Tick(), last + timedelta(days=30) - US, DEFAULTS) == entry
    released = transition(entry, Tick(), last + timedelta(days=30), DEFAULTS)
    assert released.status is Status.VALID
    # A full mailbox seen again while quarantined restarts the clock.
    again = transition(entry, Failure("mailbox_full"), last + timedelta(days=20), DEFAULTS)
    assert transition(again, Tick(), last + timedelta(days=31), DEFAULTS).status is (
        Status.QUARANTINED)


def test_other_quarantines_do_not_expire() -> None:
    entry = apply_all((timedelta(0), Failure("user_unknown")))
    assert (entry.status, entry.reason, entry.error_count) == (
        Status.QUARANTINED, "user_unknown", 1)
    assert transition(entry, Tick(), T0 + timedelta(days=3650), DEFAULTS) == entry
    five_unreachable = apply_all(
        *[(timedelta(0) if i == 0 else DAY, Failure("unreachable")) for i in range(5)])
    assert transition(five_unreachable, Tick(), T0 + timedelta(days=3650),
                      DEFAULTS).status is Status.QUARANTINED


def test_hard_errors_quarantine_at_once() -> None:
    for reason in HARD:
        assert describe(apply_all((timedelta(0), Failure(reason)))) == f"quarantined({reason})"
    # From erroneous too, without waiting for the interval.
    entry = apply_all((timedelta(0), Failure("unreachable")), (US, Failure("user_unknown")))
    assert (entry.status, entry.error_count) == (Status.QUARANTINED, 2)
    # A 5.x.x the classifier calls hard, whatever the reason's default class.
    assert apply_all((timedelta(0), Failure("not_defined", FailureClass.HARD))).status is (
        Status.QUARANTINED)


def test_ignored_refused_and_complaints() -> None:
    assert apply_all((timedelta(0), Failure("autoreply")),
                     (DAY, Failure("message_invalid"))) == VALID
    refused = apply_all(*[(DAY, Failure("refused"))] * 10)
    assert (refused.status, refused.error_count, refused.last_error_at) == (
        Status.VALID, 0, T0 + 10 * DAY)  # logged on the entry, never counted
    complained = apply_all((timedelta(0), Failure("user_unknown")), (DAY, Failure("complaint")))
    assert describe(complained) == "denylisted(complaint)"


def test_allowlisted_logs_errors_only() -> None:
    entry = transition(None, SetStatus(Status.ALLOWLISTED, "manual"), T0, DEFAULTS)
    for reason in [*HARD, *SOFT, "complaint"]:
        entry = transition(entry, Failure(reason), T0 + DAY, DEFAULTS)
    assert (entry.status, entry.reason, entry.error_count, entry.last_error_at) == (
        Status.ALLOWLISTED, "manual", 0, T0 + DAY)
    quarantined = transition(entry, SetStatus(Status.QUARANTINED, "manual"), T0 + DAY, DEFAULTS)
    assert quarantined.status is Status.QUARANTINED


def test_operator_release_and_set_status() -> None:
    entry = apply_all((timedelta(0), Failure("user_unknown")))
    released = transition(entry, Release(), T0 + DAY, DEFAULTS)
    assert (released.status, released.reason, released.status_at) == (
        Status.VALID, None, T0 + DAY)
    assert transition(released, Release(), T0 + 2 * DAY, DEFAULTS) == released
    same = transition(entry, SetStatus(Status.QUARANTINED, "user_unknown"), T0 + DAY, DEFAULTS)
    assert same == entry  # nothing to change, nothing for the ledger
    valid = transition(None, SetStatus(Status.VALID, ""), T0, DEFAULTS)
    assert valid == VALID


def test_non_default_settings() -> None:
    strict = QuarantineSettings(soft_error_max=2, soft_error_interval=timedelta(hours=6),
                                erroneous_reset_after=timedelta(days=2),
                                mailbox_full_release_after=timedelta(days=7))
    entry = apply_all((timedelta(0), Failure("mailbox_full")),
                      (timedelta(hours=6), Failure("mailbox_full")), settings=strict)
    assert describe(entry) == "quarantined(mailbox_full)"
    last = T0 + timedelta(hours=6)
    assert transition(entry, Tick(), last + timedelta(days=7) - US, strict) == entry
    assert transition(entry, Tick(), last + timedelta(days=7), strict).status is Status.VALID
    soft = apply_all((timedelta(0), Failure("unreachable")), settings=strict)
    assert transition(soft, Tick(), T0 + timedelta(days=2), strict).status is Status.VALID


# --- Known problems (reported to the lead; each flips to XPASS, failing, once fixed) -------------


def test_hard_error_on_a_mailbox_full_quarantine_is_permanent() -> None:
    full = apply_all((timedelta(0), Failure("mailbox_full")),
                     settings=QuarantineSettings(soft_error_max=1))
    assert describe(full) == "quarantined(mailbox_full)"
    gone = transition(full, Failure("user_unknown"), T0 + DAY, DEFAULTS)
    # The mailbox does not exist any more: that must not expire with the full-mailbox clock.
    assert transition(gone, Tick(), T0 + timedelta(days=365), DEFAULTS).status is (
        Status.QUARANTINED)


def test_mailbox_full_set_by_hand_runs_thirty_days() -> None:
    fresh = transition(None, SetStatus(Status.QUARANTINED, "mailbox_full"), T0, DEFAULTS)
    assert transition(fresh, Tick(), T0 + timedelta(days=30), DEFAULTS).status is Status.VALID
    old_history = transition(
        apply_all((timedelta(0), Failure("unreachable"))), Success(), T0 + DAY, DEFAULTS)
    later = T0 + timedelta(days=100)
    held = transition(old_history, SetStatus(Status.QUARANTINED, "mailbox_full"), later,
                      DEFAULTS)
    assert transition(held, Tick(), later + DAY, DEFAULTS).status is Status.QUARANTINED
