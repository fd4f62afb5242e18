"""Message content: sandboxed Jinja2 personalisation and the checks made before analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from consentry.domain.content import SmsSize, sms_size
from consentry.domain.errors import ConsentryError


def _finalize(value: Any) -> Any:
    return "" if value is None else value


# Templates come from operators: the sandbox keeps them from reaching Python internals, and
# StrictUndefined turns a misspelt variable into an error at check time instead of a blank.
_text_env = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined,
                                 finalize=_finalize, keep_trailing_newline=True)
_html_env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined,
                                 finalize=_finalize, keep_trailing_newline=True)


@dataclass(frozen=True)
class Content:
    subject: str | None = None  # email subject, push title
    text: str | None = None  # email text part, SMS text, push body
    html: str | None = None  # email HTML part


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


class ContentError(ConsentryError):
    pass


class Templates:
    """The compiled templates of one delivery."""

    def __init__(self, content: Content) -> None:
        self.content = content
        self._subject = self._compile(_text_env, "subject", content.subject or "")
        self._text = self._compile(_text_env, "text", content.text or "")
        self._html = (self._compile(_html_env, "html", content.html)
                      if content.html else None)

    @staticmethod
    def _compile(env: SandboxedEnvironment, part: str, source: str) -> Any:
        try:
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ContentError(f"{part}: line {exc.lineno}: {exc.message}") from None

    def render(self, variables: dict[str, Any]) -> Rendered:
        parts: dict[str, str | None] = {}
        for part, template in (("subject", self._subject), ("text", self._text),
                               ("html", self._html)):
            if template is None:
                parts[part] = None
                continue
            try:
                parts[part] = template.render(variables)
            except TemplateError as exc:
                line = _template_line(exc)
                where = f"line {line}: " if line else ""
                raise ContentError(f"{part}: {where}{exc}") from None
        return Rendered(parts["subject"] or "", parts["text"] or "", parts["html"])


def _template_line(exc: BaseException) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


SAMPLE_UNSUBSCRIBE = "https://unsubscribe.invalid/u/SAMPLE"
SAMPLE_PREFERENCES = "https://unsubscribe.invalid/p/SAMPLE"
SAMPLE_PROFILE = {"id": 0, "first_name": "Erika", "last_name": "Mustermann",
                  "email": "erika@example.com", "phone": "+4915123456789", "locale": "de-DE",
                  "external_id": "SAMPLE", "attributes": {}}


@dataclass(frozen=True)
class CheckResult:
    sms: SmsSize | None = None


def check(content: Content, *, channel: str, marketing: bool) -> CheckResult:
    """Refuse content that must not go out; raises ContentError saying what and where."""
    templates = Templates(content)
    sample = templates.render({"profile": SAMPLE_PROFILE, "unsubscribe_url": SAMPLE_UNSUBSCRIBE,
                               "preferences_url": SAMPLE_PREFERENCES})
    if channel == "email":
        if not sample.subject.strip():
            raise ContentError("an email needs a subject (--subject)")
        if not sample.text.strip():
            raise ContentError("an email needs a text part (--text)")
        if marketing:
            # Gmail requires a visible unsubscribe link; Adobe only warns. We refuse.
            missing = [part for part, body in (("text", sample.text), ("html", sample.html))
                       if body is not None and SAMPLE_UNSUBSCRIBE not in body]
            if missing:
                raise ContentError(
                    f"a marketing email needs an unsubscribe link ({{{{ unsubscribe_url }}}}) "
                    f"in its {' and '.join(missing)} part{'s' if len(missing) > 1 else ''}")
        return CheckResult()
    if not sample.text.strip():
        raise ContentError(f"a {channel} message needs a text (--text)")
    if channel == "sms":
        return CheckResult(sms=sms_size(sample.text))
    return CheckResult()
