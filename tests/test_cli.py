"""The command line as the contract names it: shapes of --json output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import cli


def test_profile_lifecycle_through_the_cli(db_url):
    created = cli(db_url, "profiles", "add", "--email", "Jo@Example.com", "--phone",
                  "0170 1234567", "--first-name", "Jo", "--last-name", "Doe", "--locale", "de_de",
                  "--external-id", "CRM-1", "--push-token", "tok_abcdefgh123:shop-app:ios",
                  "--attr", "tier=gold", "--json")
    assert created.exit_code == 0, created.stderr
    pid = created.json()["id"]
    assert isinstance(pid, int)

    for ref in (str(pid), "CRM-1", "jo@example.com", "+491701234567", "0170 1234567"):
        shown = cli(db_url, "profiles", "show", ref, "--json")
        assert shown.exit_code == 0, (ref, shown.stderr)
        assert shown.json()["id"] == pid
    data = shown.json()
    assert {k: data[k] for k in ("id", "external_id", "email", "phone", "opted_out")} == {
        "id": pid, "external_id": "CRM-1", "email": "Jo@example.com", "phone": "+491701234567",
        "opted_out": False}
    assert data["locale"] == "de-DE" and data["attributes"] == {"tier": "gold"}
    assert {c: v["opted_out"] for c, v in data["channels"].items()} == {
        "email": False, "sms": False, "push": False}
    assert data["subscriptions"] == []
    assert [(a["address"], a["channel"], a["status"]) for a in data["addresses"]] == [
        ("Jo@example.com", "email", "valid"), ("+491701234567", "sms", "valid"),
        ("tok_abcdefgh123", "push", "valid")]
    assert data["push_tokens"] == [{"token": "tok_abcdefgh123", "app_id": "shop-app",
                                    "platform": "ios"}]

    assert cli(db_url, "optout", "CRM-1", "--channel", "sms", "--note", "asked").exit_code == 0
    assert cli(db_url, "profiles", "show", "CRM-1", "--json").json()["channels"]["sms"][
        "opted_out"]
    out = cli(db_url, "optout", "CRM-1", "--json").json()
    assert out == {"profile": pid, "scope": "all", "opted_out": True, "changed": True}
    assert cli(db_url, "profiles", "show", "CRM-1", "--json").json()["opted_out"] is True
    assert cli(db_url, "optin", "CRM-1", "--json").json()["changed"] is True

    assert cli(db_url, "services", "create", "news", "--channel", "email", "--label",
               "Newsletter", "--double-opt-in", "--validity-days", "365").exit_code == 0
    sub = cli(db_url, "subscribe", "CRM-1", "news", "--json").json()
    assert sub["state"] == "pending" and sub["needs_confirmation"]
    assert cli(db_url, "subscribe", "CRM-1", "news", "--confirmed", "--json").json()[
        "state"] == "subscribed"
    shown = cli(db_url, "profiles", "show", "CRM-1", "--json").json()
    assert [(s["service"], s["state"]) for s in shown["subscriptions"]] == [
        ("news", "subscribed")]
    assert cli(db_url, "unsubscribe", "CRM-1", "news", "--json").json()["state"] == \
        "unsubscribed"
    services = cli(db_url, "services", "list", "--json").json()
    assert services[0]["slug"] == "news" and services[0]["subscriptions"]["unsubscribed"] == 1

    history = cli(db_url, "ledger", "show", "CRM-1", "--json").json()
    assert [e["kind"] for e in history] == ["opt_out", "opt_out", "opt_in", "subscription",
                                            "subscription", "subscription"]
    assert all({"at", "kind", "source"} <= set(e) for e in history)
    assert history[0]["source"] == "cli" and history[0]["actor"].startswith("os:")
    assert history[0]["note"] == "asked"
    assert cli(db_url, "ledger", "verify", "--json").json() == {"ok": True, "events": 6}


def test_quarantine_through_the_cli(db_url):
    cli(db_url, "profiles", "add", "--email", "a@gmail.example")
    cli(db_url, "profiles", "add", "--email", "A@gmail.example")
    dup = cli(db_url, "profiles", "duplicates", "--json").json()
    assert dup == [{"channel": "email", "address": "a@gmail.example", "profiles": [1, 2]}]

    unknown = cli(db_url, "quarantine", "show", "nobody@example.com", "--json").json()
    assert unknown["status"] == "valid" and unknown["channel"] == "email"
    for key in ("address", "channel", "status", "reason", "error_count", "first_error_at",
                "last_error_at"):
        assert key in unknown

    added = cli(db_url, "quarantine", "add", "a@GMAIL.example", "--status", "quarantined",
                "--reason", "user_unknown", "--note", "bounced", "--json")
    assert added.exit_code == 0, added.stderr
    assert added.json()["status"] == "quarantined"
    for pid in ("1", "2"):
        address = cli(db_url, "profiles", "show", pid, "--json").json()["addresses"][0]
        assert address["status"] == "quarantined"
    cli(db_url, "quarantine", "add", "+49 170 1234567", "--status", "denylisted", "--reason",
        "sms_stop")
    listed = cli(db_url, "quarantine", "list", "--json").json_lines()
    assert {r["address"] for r in listed} == {"a@gmail.example", "+491701234567"}
    assert [r["channel"] for r in cli(db_url, "quarantine", "list", "--channel", "sms",
                                      "--json").json_lines()] == ["sms"]
    assert len(cli(db_url, "quarantine", "list", "--domain", "gmail.example",
                   "--json").json_lines()) == 1
    assert len(cli(db_url, "quarantine", "list", "--reason", "sms_stop",
                   "--json").json_lines()) == 1

    dry = cli(db_url, "quarantine", "release", "--reason", "user_unknown", "--domain",
              "gmail.example", "--dry-run", "--json").json()
    assert dry == {"released": 0, "matched": 1, "dry_run": True}
    done = cli(db_url, "quarantine", "release", "--reason", "user_unknown", "--domain",
               "gmail.example", "--since", "2000-01-01", "--json").json()
    assert done["released"] == 1
    one = cli(db_url, "quarantine", "release", "+491701234567", "--json").json()
    assert one["released"] is True and one["status"] == "valid"
    assert cli(db_url, "quarantine", "list", "--json").json_lines() == []


def test_user_errors_exit_1_with_a_message_on_stderr(db_url):
    cases = [
        ("profiles", "show", "999"),
        ("profiles", "add", "--email", "not-an-address"),
        ("profiles", "add", "--phone", "12"),
        ("optout", "999"),
        ("optout", "1", "--channel", "fax"),
        ("quarantine", "add", "x@example.com", "--status", "banned"),
        ("quarantine", "add", "x@example.com", "--status", "quarantined", "--reason", "meh"),
        ("quarantine", "release"),
        ("quarantine", "release", "--since", "yesterday"),
        ("subscribe", "1", "nope"),
        ("services", "create", "Bad Slug", "--channel", "email", "--label", "x"),
        ("profiles", "import", "/nonexistent.csv"),
    ]
    cli(db_url, "profiles", "add", "--email", "one@example.com")
    for args in cases:
        run = cli(db_url, *args)
        assert run.exit_code == 1, (args, run.stdout, run.stderr)
        assert run.stderr.startswith("error: "), (args, run.stderr)


def test_bad_usage_exits_2(db_url):
    assert cli(db_url, "optout").exit_code == 2
    assert cli(db_url, "no-such-command").exit_code == 2
    assert cli(db_url, "quarantine", "add", "x@example.com").exit_code == 2  # --status missing


def test_unmigrated_database_is_a_clear_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    run = cli(url, "profiles", "show", "1")
    assert run.exit_code == 1 and "consentry db upgrade" in run.stderr
    assert cli(url, "db", "upgrade").exit_code == 0
    assert cli(url, "db", "upgrade").exit_code == 0  # idempotent
    assert cli(url, "profiles", "add", "--email", "a@example.com", "--json").json() == {"id": 1}


def test_console_script_runs_in_a_subprocess(tmp_path):
    """The installed `consentry` entry point, with settings from the environment and the
    default database file in the current directory."""
    env = {"PATH": "/usr/bin:/bin", "CONSENTRY_DEFAULT_REGION": "GB"}
    exe = [sys.executable, "-m", "consentry"]
    assert subprocess.run([*exe, "db", "upgrade"], cwd=tmp_path, env=env,
                          capture_output=True, check=True).returncode == 0
    assert (tmp_path / "consentry.db").exists()
    out = subprocess.run([*exe, "profiles", "add", "--phone", "07911 123456", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"id": 1}
    shown = subprocess.run([*exe, "--json", "profiles", "show", "1"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["phone"] == "+447911123456"
