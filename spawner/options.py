"""Spawn form and REST ``user_options`` -> one validated environment.

Every rejection is an :class:`OptionsError` whose message is one sentence a user can
act on; the spawner turns it into HTTP 400 before anything is created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .catalogue import Catalogue, Environment

ALLOWED_KEYS = frozenset({"environment"})


class OptionsError(ValueError):
    """User input that cannot be spawned; ``str(err)`` is shown to the user."""


def options_from_form(formdata: Mapping[str, list[Any]]) -> dict[str, str]:
    """Turn the spawn form's fields (lists of strings) into ``user_options``."""
    values = formdata.get("environment") or []
    if (
        not isinstance(values, list | tuple)
        or len(values) != 1
        or not isinstance(values[0], str)
        or not values[0].strip()
    ):
        raise OptionsError("Pick exactly one environment from the list, then press Start.")
    return {"environment": values[0].strip()}


def choose_environment(user_options: Mapping[str, Any] | None, catalogue: Catalogue) -> Environment:
    """The environment that ``user_options`` asks for, or :class:`OptionsError`."""
    if user_options is not None and not isinstance(user_options, Mapping):
        raise OptionsError('The options must be a JSON object such as {"environment": "desktop"}.')
    options = dict(user_options or {})
    unknown = sorted(set(options) - ALLOWED_KEYS, key=str)
    if unknown:
        raise OptionsError(
            f"Unknown option {_shown(unknown[0])}: only 'environment' can be chosen when starting."
        )
    choices = ", ".join(catalogue.names()) or "none configured"
    if "environment" not in options:
        default = catalogue.default
        if default is None:
            raise OptionsError(f"Choose an environment to start; available: {choices}.")
        return default
    name = options["environment"]
    if not isinstance(name, str) or not name:
        raise OptionsError(f"The environment must be given by its name; available: {choices}.")
    env = catalogue.get(name)
    if env is None:
        raise OptionsError(f"Unknown environment {_shown(name)}; pick one of: {choices}.")
    return env


def _shown(value: Any, limit: int = 40) -> str:
    """A user's value quoted for a message: at most ``limit`` characters of it, with
    control and other unprintable characters escaped, so the message stays one short line."""
    text = value if isinstance(value, str) else repr(value)
    cut = text if len(text) <= limit else text[:limit] + "…"
    return repr(cut)
