"""Content rules: SMS segments, personalisation in the sandbox."""

from __future__ import annotations

import pytest

from consentry.delivery.content import Content, ContentError, Templates
from consentry.domain.content import sms_size
from helpers import cli


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("", "GSM-7", 0, 0),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
    ("€" * 81, "GSM-7", 162, 2),
    ("Grüße aus Köln" + "!" * 146, "GSM-7", 160, 1),  # ü, ö are in the basic set
    ("ç" * 70, "UCS-2", 70, 1),  # lowercase ç is not (only Ç is)
    ("ç" * 71, "UCS-2", 71, 2),
    ("😀" * 35, "UCS-2", 70, 1),  # astral characters are two UTF-16 units
    ("x" * 134 + "😀", "UCS-2", 136, 3),
])
def test_sms_segments(text, encoding, units, segments):
    size = sms_size(text)
    assert (size.encoding, size.units, size.segments) == (encoding, units, segments)


def test_templates_are_sandboxed_and_escape_html():
    templates = Templates(Content(subject="{{ profile.first_name }}",
                                  text="{{ profile.first_name }}",
                                  html="<b>{{ profile.first_name }}</b>"))
    out = templates.render({"profile": {"first_name": "<script>x</script>"}})
    assert out.text == "<script>x</script>" and "&lt;script&gt;" in out.html
    hostile = Templates(Content(subject="s", text="{{ ''.__class__.__mro__ }}"))
    with pytest.raises(ContentError, match="text"):
        hostile.render({})
    missing = Templates(Content(subject="s", text="{{ profile.first_name }}!"))
    assert missing.render({"profile": {"first_name": None}}).text == "!"


def test_sms_delivery_reports_its_segments(db_url, tmp_path):
    text = tmp_path / "sms.txt"
    text.write_text("Hallo {{ profile.first_name }}, 20% Rabatt heute! STOP an 12345",
                    encoding="utf-8")
    run = cli(db_url, "delivery", "create", "--name", "sms", "--channel", "sms", "--audience",
              "all", "--text", str(text), "--json")
    assert run.exit_code == 0, run.stderr
    assert run.json()["sms"] == {"encoding": "GSM-7", "units": 44, "segments": 1}
