"""Rendering the public pages: one Jinja2 environment per language with its catalog installed,
the language of the request, and the CSRF value every form carries."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from consentry.web import i18n
from consentry.web.security import CSRF_FIELD, HONEYPOT_FIELD, csrf_token, remember_csrf

TEMPLATES = Path(__file__).with_name("templates")


@cache
def environment(lang: str) -> Environment:
    # auto_reload off: templates are part of the package, and checking each file's mtime on
    # every render cost a system call per page (8% of a one-click request).
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(),
                      auto_reload=False,
                      undefined=StrictUndefined, extensions=["jinja2.ext.i18n"])
    env.install_gettext_translations(i18n.translations(lang), newstyle=True)  # type: ignore[attr-defined]
    return env


def language(request: Request, profile_locale: str | None = None) -> str:
    return i18n.choose(request.query_params.get("lang"), profile_locale,
                       request.headers.get("accept-language"))


def gettext(lang: str, message: str, **variables: Any) -> str:
    """A translated message outside a template (errors, flash messages)."""
    text = i18n.translations(lang).gettext(message)
    return text % variables if variables else text


def page(request: Request, template: str, lang: str, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    """Render `template` in `lang`; every page gets the CSRF value and the field names."""
    html = environment(lang).get_template(template).render(
        lang=lang, csrf_field=CSRF_FIELD, csrf_token=csrf_token(request),
        honeypot_field=HONEYPOT_FIELD, path=request.url.path, **context)
    response = HTMLResponse(html, status_code=status_code)
    return remember_csrf(request, response)  # type: ignore[return-value]
