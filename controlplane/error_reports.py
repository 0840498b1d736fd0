"""What Django's error reports may show: the technical 500/400 pages under DEBUG and the error
emails. Settings name it in DEFAULT_EXCEPTION_REPORTER_FILTER.

Django's own filter hides settings and request.META entries whose name contains KEY, TOKEN,
SECRET, PASS and the like. Gatehouse's key-encryption keys (GATEHOUSE_KEK_RING, GATEHOUSE_KEK_1,
...) match none of those, and URLs carry passwords (DATABASE_URL, REDIS_URL, GATEHOUSE_BROKER_REDIS_URL,
CELERY_BROKER_URL, the cache's LOCATION). So this filter also hides:
- every setting read through `env_secret` in controlplane/settings.py, and the variables it reads
  (found in its source, so a secret added there is hidden without a change here), and anything
  with KEK in its name: in the settings and in request.META, which under runserver holds the
  whole environment;
- the password of any URL (scheme://user:password@host, ?password=, ?sentinel_password=), wherever
  a value is shown;
- the values of those secrets wherever they appear: in settings, in request.META and in the
  local variables of the traceback.
"""

import ast
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.views.debug import CallableSettingWrapper, SafeExceptionReporterFilter

SETTINGS_SOURCE = Path(__file__).with_name("settings.py")
# What Django hides by name (API|AUTH|TOKEN|KEY|SECRET|PASS|...), plus the key-encryption keys.
HIDDEN_NAMES = re.compile(f"{SafeExceptionReporterFilter.hidden_settings.pattern}|KEK", flags=re.IGNORECASE)
# scheme://user:password@ (the user may be empty, as in redis://:password@host), and ?password=.
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/?#@]*:)[^\s@]*@", flags=re.IGNORECASE)
QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:\w*password|pass|pwd)=)[^&#\s]*", flags=re.IGNORECASE)
# A value shorter than this is not searched for inside other values: it would mask at random.
SHORTEST_SECRET = 8


@functools.cache
def secret_names() -> frozenset[str]:
    """The settings assigned from `env_secret` (directly or through a function of settings.py that
    calls it) and the environment variables it is given, read from the source of settings.py."""
    tree = ast.parse(SETTINGS_SOURCE.read_text(), filename=str(SETTINGS_SOURCE))
    readers = {"env_secret"} | {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef) and _calls(node, {"env_secret"})
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) == "env_secret" and node.args:
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
    for statement in _module_level_statements(tree.body):
        if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value and _calls(statement.value, readers):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return frozenset(name for name in names if name.isupper())


def _called_name(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _calls(node: ast.AST, functions: set[str]) -> bool:
    return any(isinstance(child, ast.Call) and _called_name(child) in functions for child in ast.walk(node))


def _module_level_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Statements run at import, inside if/for/with/try blocks too, but not inside functions."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _module_level_statements(getattr(statement, field, []))
        for handler in getattr(statement, "handlers", []):
            yield from _module_level_statements(handler.body)


def is_secret_name(name: Any) -> bool:
    return isinstance(name, str) and (name.upper() in secret_names() or bool(HIDDEN_NAMES.search(name)))


def without_url_passwords(text: str, substitute: str) -> str:
    text = URL_PASSWORD.sub(lambda match: f"{match['head']}{substitute}@", text)
    return QUERY_PASSWORD.sub(lambda match: f"{match['head']}{substitute}", text)


class SecretsFilter(SafeExceptionReporterFilter):
    """Django's SafeExceptionReporterFilter, hiding Gatehouse's secrets too (see the module)."""

    hidden_settings = HIDDEN_NAMES

    def secret_values(self) -> list[str]:
        """The current values of the secret settings and variables, longest first."""
        values: list[str] = []
        for name in secret_names():
            values.extend(_strings(getattr(settings, name, None)))
        values.extend(value for name, value in os.environ.items() if is_secret_name(name))
        for database in getattr(settings, "DATABASES", {}).values():
            values.extend(_strings(database.get("PASSWORD")))
        for name in dir(settings):
            value = getattr(settings, name, None) if name.endswith("_URL") else None
            if isinstance(value, str):
                values.extend(_strings(_url_password(value)))
        return sorted({value for value in values if len(value) >= SHORTEST_SECRET}, key=len, reverse=True)

    def cleanse_text(self, text: str, secrets: list[str]) -> str:
        text = without_url_passwords(text, self.cleansed_substitute)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, self.cleansed_substitute)
        return text

    def cleanse(self, key: Any, value: Any, secrets: list[str]) -> Any:
        """Django's cleanse_setting, also by Gatehouse's names and inside every string."""
        if key == settings.SESSION_COOKIE_NAME or is_secret_name(key):
            return self.cleansed_substitute
        if isinstance(value, str):
            return self.cleanse_text(value, secrets)
        if isinstance(value, dict):
            cleansed: Any = {k: self.cleanse(k, v, secrets) for k, v in value.items()}
        elif isinstance(value, list):
            cleansed = [self.cleanse("", item, secrets) for item in value]
        elif isinstance(value, tuple):
            cleansed = tuple(self.cleanse("", item, secrets) for item in value)
        else:
            cleansed = value
        return CallableSettingWrapper(cleansed) if callable(cleansed) else cleansed

    def cleanse_setting(self, key, value):
        return self.cleanse(key, value, self.secret_values())

    def get_safe_settings(self):
        secrets = self.secret_values()
        return {name: self.cleanse(name, getattr(settings, name), secrets) for name in dir(settings) if name.isupper()}

    def get_safe_request_meta(self, request):
        if not hasattr(request, "META"):
            return {}
        secrets = self.secret_values()
        return {name: self.cleanse(name, value, secrets) for name, value in request.META.items()}

    def get_safe_cookies(self, request):
        if not hasattr(request, "COOKIES"):
            return {}
        secrets = self.secret_values()
        return {name: self.cleanse(name, value, secrets) for name, value in request.COOKIES.items()}

    def get_traceback_frame_variables(self, request, tb_frame):
        secrets = self.secret_values()
        return [
            (name, self._cleanse_variable(value, secrets))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]

    def _cleanse_variable(self, value: Any, secrets: list[str]) -> Any:
        # type(), not isinstance(): isinstance would evaluate a lazy object. A MultiValueDict
        # (request.POST) keeps Django's treatment; os.environ is shown as the dict it holds.
        kind = type(value)
        if kind is str:
            return self.cleanse_text(value, secrets)
        if kind is type(os.environ):
            return self.cleanse("", dict(value), secrets)
        if kind in (dict, list, tuple):
            return self.cleanse("", value, secrets)
        return value


def _strings(value: Any) -> list[str]:
    """Every string inside a setting's value (a key ring is a dict of them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode(errors="replace")]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list | tuple | set | frozenset):
        return [text for item in value for text in _strings(item)]
    return []


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
