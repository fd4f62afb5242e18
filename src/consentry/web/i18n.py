"""Languages of the public pages: German and English, from Babel catalogs.

Every `.po` file under `locales/<lang>/LC_MESSAGES/` is read when the app starts (each part of
the web app keeps its own file) and merged into one catalog per language, compiled in memory:
there is no build step. English is the source language. The language of a request is `?lang=`,
then the profile's locale (when the page knows the profile), then Accept-Language.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

from babel import Locale, UnknownLocaleError, negotiate_locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALES_DIR = Path(__file__).with_name("locales")
LANGUAGES = ("en", "de")
DEFAULT = "en"


@cache
def translations(lang: str) -> NullTranslations:
    """The merged catalog of a language (English: the source strings themselves)."""
    folder = LOCALES_DIR / lang / "LC_MESSAGES"
    merged: Translations | None = None
    for po_file in sorted(folder.glob("*.po")) if folder.is_dir() else []:
        with po_file.open("rb") as f:
            catalog = read_po(f, locale=lang)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        part = Translations(buffer)
        merged = part if merged is None else merged.merge(part)
    return merged if merged is not None else NullTranslations()


def _supported(value: str | None) -> str | None:
    if not value:
        return None
    try:
        language = Locale.parse(value.replace("-", "_")).language
    except (ValueError, TypeError, UnknownLocaleError):
        return None
    return language if language in LANGUAGES else None


def choose(query: str | None, profile_locale: str | None, accept_language: str | None) -> str:
    """?lang=, then the profile's locale, then the browser's Accept-Language, then English."""
    for candidate in (query, profile_locale):
        chosen = _supported(candidate)
        if chosen:
            return chosen
    if accept_language:
        wanted = []
        for item in accept_language.split(","):
            tag, _, params = item.strip().partition(";")
            quality = 1.0
            if params.strip().startswith("q="):
                try:
                    quality = float(params.strip()[2:])
                except ValueError:
                    quality = 0.0
            if tag and quality > 0:
                wanted.append((quality, tag.strip()))
        preferred = [tag.replace("-", "_") for _, tag in sorted(wanted, key=lambda w: -w[0])]
        found = negotiate_locale(preferred, list(LANGUAGES), sep="_")
        if found:
            return found.split("_")[0]
        for tag in preferred:  # "de_AT" and the like
            chosen = _supported(tag)
            if chosen:
                return chosen
    return DEFAULT
