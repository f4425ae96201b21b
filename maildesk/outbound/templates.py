"""Jinja2 templates for outbound mail: ``<event>.<audience>.{txt,html}.j2``.

Sandboxed and strict: a template cannot reach Python internals, and a
misspelt variable is an error rather than an empty string. A template sets
its subject with ``{% set subject = "..." %}``. Lookup order for overrides:
``<queue>/<language>/``, ``<queue>/``, ``<language>/``, then the top folder;
the text and HTML parts both come from the first folder that has either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inscriptis import get_text
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

import maildesk
from maildesk.config import ConfigError, Settings

SHIPPED_TEMPLATES = Path(maildesk.__file__).resolve().parents[1] / "templates"

# The variables of a customer notice (Notices.variables), for a trial render.
SAMPLE: dict[str, Any] = {
    "ticket": {
        "number": 1,
        "subject": "s",
        "status": "new",
        "priority": "normal",
        "category": None,
    },
    "customer": {"email": "c@example.com", "name": "C"},
    "support": {"name": "Support", "address": "support@example.com"},
    "quote": "q",
    "reopen_days": 14,
    "rating": [{"score": 5, "address": "support+rate-1-5-sig@example.com"}],
}


class TemplateMissing(LookupError):
    pass


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def default_templates_dir(configured: Path | None) -> Path:
    if configured is not None:
        return configured
    local = Path("templates")
    return local if local.is_dir() else SHIPPED_TEMPLATES


class TemplateRenderer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        loader = FileSystemLoader(str(directory))
        # Templates change when ops say so (SIGHUP builds a new renderer), not
        # whenever a file's mtime moves mid-edit.
        options: dict[str, Any] = {
            "undefined": StrictUndefined,
            "keep_trailing_newline": True,
            "auto_reload": False,
            "cache_size": -1,  # what compile_all loaded stays: never read from disk again
        }
        self._text_env = SandboxedEnvironment(loader=loader, autoescape=False, **options)
        self._html_env = SandboxedEnvironment(loader=loader, autoescape=True, **options)

    def compile_all(self) -> list[str]:
        """Load every template now; the ones that do not compile, one line each.

        Loaded templates are kept in memory, so a file edited (or broken) on
        disk later changes nothing until the next SIGHUP builds a new renderer.
        """
        errors = []
        for name in self._text_env.list_templates(extensions=["j2"]):
            env = self._html_env if name.endswith(".html.j2") else self._text_env
            try:
                env.get_template(name)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                errors.append(f"{self.directory / name}{f' line {line}' if line else ''}: {exc}")
        return errors

    def trial_render(self, event: str, audience: str, variables: dict[str, Any]) -> str | None:
        """Render the top folder's ``<event>.<audience>`` parts; the first that fails, why."""
        for kind, env in (("txt", self._text_env), ("html", self._html_env)):
            name = f"{event}.{audience}.{kind}.j2"
            try:
                template = self._load(env, name)
                if template is not None:
                    str(template.make_module(variables))
            except Exception as exc:  # whatever a template does wrong, with any variables
                return f"{self.directory / name}: does not render: {type(exc).__name__}: {exc}"
        return None

    def _candidates(self, name: str, queue: str | None, language: str | None) -> list[str]:
        prefixes = []
        if queue and language:
            prefixes.append(f"{queue}/{language}/")
        if queue:
            prefixes.append(f"{queue}/")
        if language:
            prefixes.append(f"{language}/")
        prefixes.append("")
        return [p + name for p in prefixes]

    def _find(self, base: str, queue: str | None, language: str | None) -> tuple[Any, Any]:
        """The text and HTML template of the most specific folder that has either.

        Both parts come from one folder: a translated or queue-specific text
        template must not go out beside the top folder's HTML, which is the
        part most mail clients show.
        """
        for candidate in self._candidates(base, queue, language):
            found = [
                self._load(self._text_env, f"{candidate}.txt.j2"),
                self._load(self._html_env, f"{candidate}.html.j2"),
            ]
            if any(t is not None for t in found):
                return found[0], found[1]
        return None, None

    @staticmethod
    def _load(env: SandboxedEnvironment, name: str) -> Any:
        try:
            return env.get_template(name)
        except TemplateNotFound:
            return None

    def exists(self, event: str, audience: str) -> bool:
        base = f"{event}.{audience}"
        return any((self.directory / f"{base}.{kind}.j2").exists() for kind in ("txt", "html"))

    def render(
        self,
        event: str,
        audience: str,
        variables: dict[str, Any],
        *,
        queue: str | None = None,
        language: str | None = None,
    ) -> Rendered:
        base = f"{event}.{audience}"
        text_tpl, html_tpl = self._find(base, queue, language)
        if text_tpl is None and html_tpl is None:
            raise TemplateMissing(
                f"no template {base}.txt.j2 or {base}.html.j2 in {self.directory}"
            )
        subject = ""
        text = html = None
        if html_tpl is not None:
            module = html_tpl.make_module(variables)
            html = str(module)
            subject = str(getattr(module, "subject", "") or "")
        if text_tpl is not None:
            module = text_tpl.make_module(variables)
            text = str(module)
            subject = str(getattr(module, "subject", "") or subject)
        if text is None:
            text = get_text(html or "")
        return Rendered(subject=" ".join(subject.split()), text=text, html=html)


def required_templates(settings: Settings) -> list[str]:
    """The customer templates this configuration sends (``<event>.customer``).

    The acknowledgement (unless ``acknowledgements.enabled = false``) and the
    resolution notice. Others are optional or checked where the config names
    them (the ``[sla]`` templates, a rule's ``ack_template``).
    """
    return [*(["ack"] if settings.acknowledgements.enabled else []), "resolved"]


def template_problems(settings: Settings, renderer: TemplateRenderer) -> list[str]:
    """What keeps ``renderer`` from being used, one line each naming the file; [] if nothing.

    Every template must compile, and the ones every installation sends
    (:func:`required_templates`) must be there and render. Compiled templates stay
    in ``renderer``, as :meth:`TemplateRenderer.compile_all` keeps them.
    """
    problems = renderer.compile_all()
    if problems:
        return problems
    for event in required_templates(settings):
        if not renderer.exists(event, "customer"):
            problems.append(
                f"no template {event}.customer.txt.j2 or {event}.customer.html.j2"
                f" in {renderer.directory}"
            )
        elif problem := renderer.trial_render(event, "customer", SAMPLE):
            problems.append(problem)
    return problems


def check_templates(settings: Settings, renderer: TemplateRenderer) -> None:
    """ConfigError (exit 78) naming ``templates_dir`` and each template at fault."""
    if problems := template_problems(settings, renderer):
        raise ConfigError(settings.source, "templates_dir", "; ".join(problems))
