"""`profiles export`: every profile with its consent columns, streamed to a CSV file.

Columns: id, external_id, email, phone, first_name, last_name, locale, opted_out,
email_opted_out, sms_opted_out, push_opted_out (1 or 0), subscriptions (`slug:state|slug:state`,
by slug), created_at (ISO 8601, UTC), push_tokens (a JSON list of {"token", "app_id",
"platform"}, empty when there is none), then one column per custom attribute name in use
(non-text values as JSON). `profiles import` reads every one of them back (id and created_at
describe the source database and are not imported), so an export re-imported into an empty
database gives the same profiles, consent and subscriptions, and re-imported into its own
database changes nothing.

Profiles are read in id order through a streaming cursor, a batch at a time; each batch's
opt-outs, subscriptions and tokens come from one range query per table. PostgreSQL reads in one
REPEATABLE READ transaction, so the file is one consistent snapshot even while others write.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from consentry.profiles import import_sql as sql
from consentry.profiles.csv_import import SUBSCRIPTION_SEPARATOR, SUBSCRIPTION_STATE_SEPARATOR
from consentry.settings import Settings

EXPORT_COLUMNS = ("id", "external_id", "email", "phone", "first_name", "last_name", "locale",
                  "opted_out", "email_opted_out", "sms_opted_out", "push_opted_out",
                  "subscriptions", "created_at", "push_tokens")
_OPT_OUT_SCOPES = ("all", "email", "sms", "push")  # in the order of the opted_out columns

# Profiles per streamed batch (and per range query of their consent state).
BATCH = 5000


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def export_profiles(engine: sa.Engine, settings: Settings, path: Path,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """Write all profiles to `path`; returns the number of rows written."""
    del settings  # the export needs no setting; the CLI passes them to every command alike
    options: dict[str, Any] = ({"isolation_level": "REPEATABLE READ"}
                               if engine.dialect.name == "postgresql" else {})
    written = 0
    with engine.connect().execution_options(**options) as conn, conn.begin():
        total = conn.execute(sql.COUNT_PROFILES).scalar_one()
        names = list(conn.execute(sql.ATTRIBUTE_NAMES[conn.dialect.name]).scalars())
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow([*EXPORT_COLUMNS, *names])
            result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(
                sql.ALL_PROFILES)
            for batch in result.partitions():
                bounds = {"low": batch[0].id, "high": batch[-1].id}
                opted: dict[int, set[str]] = defaultdict(set)
                for profile_id, scope in conn.execute(sql.OPT_OUTS_IN_RANGE, bounds):
                    opted[profile_id].add(scope)
                subscribed: dict[int, list[str]] = defaultdict(list)
                for profile_id, slug, state in conn.execute(sql.SUBSCRIPTIONS_IN_RANGE, bounds):
                    subscribed[profile_id].append(f"{slug}{SUBSCRIPTION_STATE_SEPARATOR}{state}")
                tokens: dict[int, list[dict[str, str]]] = defaultdict(list)
                for profile_id, token, app_id, platform in conn.execute(sql.TOKENS_IN_RANGE,
                                                                        bounds):
                    tokens[profile_id].append({"token": token, "app_id": app_id,
                                               "platform": platform})
                rows = []
                for p in batch:
                    scopes = opted.get(p.id, set())
                    attributes = p.attributes if isinstance(p.attributes, dict) else {}
                    rows.append([
                        p.id, p.external_id or "", p.email or "", p.phone or "",
                        p.first_name or "", p.last_name or "", p.locale or "",
                        *("1" if scope in scopes else "0" for scope in _OPT_OUT_SCOPES),
                        SUBSCRIPTION_SEPARATOR.join(subscribed.get(p.id, [])),
                        p.created_at.isoformat(),
                        json.dumps(tokens[p.id], separators=(",", ":")) if p.id in tokens
                        else "",
                        *(_cell(attributes.get(name)) for name in names),
                    ])
                writer.writerows(rows)
                written += len(rows)
                if progress is not None:
                    progress(written, total)
    return written
