"""Layered site configuration: embedded defaults, then the site YAML, validated by a schema.

``load_site`` returns plain data or raises :class:`SiteConfigError`, whose message names the
file and the offending key, so a typo stops the hub with one readable line.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

HERE = Path(__file__).parent
DEFAULTS = HERE / "defaults.yaml"
SCHEMA = HERE / "site-schema.yaml"


class SiteConfigError(Exception):
    """The site YAML cannot be used; the message names the file and key."""


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two mappings into a new dict; lists and scalars in ``override`` win."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise SiteConfigError(f"{path}: cannot read site config ({err.strerror})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SiteConfigError(f"{path}:{where} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if _is_key_error(error):
        parts.append(str(error.instance))
    elif error.validator == "additionalProperties":
        # name the unexpected key itself, not only its parent
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            parts.append(extra[0])
    return ".".join(parts) or "(top level)"


def _is_key_error(error: jsonschema.ValidationError) -> bool:
    """True when the error is about a mapping's key (``propertyNames``), not a value."""
    return "propertyNames" in error.schema_path


def _describe(error: jsonschema.ValidationError) -> str:
    if _is_key_error(error):
        return "is not an allowed name: use lowercase letters, digits, '.', '_' and '-'"
    if error.validator == "additionalProperties":
        return "is not a known setting (check its spelling and indentation)"
    if error.validator == "required":
        return error.message
    if error.validator == "pattern":
        return f"has the value {error.instance!r}, which is not of the expected form"
    if error.validator == "oneOf" and "description" in error.schema:
        return f"must be {error.schema['description']}, not {error.instance!r}"
    if error.validator == "oneOf":
        return f"has the value {error.instance!r}, which is not one of its accepted forms"
    if error.validator == "enum":
        return f"must be one of {error.validator_value}, not {error.instance!r}"
    return error.message


def explain(error: jsonschema.ValidationError) -> str:
    """One error of the schema as the hub prints it: the key's path, then what is wrong."""
    return f"'{_key_path(error)}' {_describe(error)}"


def validate(config: Mapping[str, Any], source: str) -> None:
    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise SiteConfigError(f"{source}: {explain(first)}{more}")
    environments = config.get("environments", {})
    defaults = [name for name, env in environments.items() if env.get("default")]
    if len(defaults) > 1:
        raise SiteConfigError(
            f"{source}: 'environments' marks {len(defaults)} defaults ({', '.join(defaults)});"
            " mark at most one"
        )
    nodes = config.get("nodes", [])
    names = [node["name"] for node in nodes]
    if len(names) != len(set(names)):
        raise SiteConfigError(f"{source}: 'nodes' has two nodes with the same name")
    for i, node in enumerate(nodes):
        remote = node["endpoint"].startswith("tcp://")
        if remote and "hub_connect_url" not in node:
            raise SiteConfigError(
                f"{source}: 'nodes.{i}' ({node['name']}) is remote, so it needs"
                " 'hub_connect_url': the hub's URL as its containers reach it,"
                " e.g. http://10.0.0.1:8081"
            )
        gpu_ids = [gpu["id"] for gpu in node.get("gpus", [])]
        if len(gpu_ids) != len(set(gpu_ids)):
            raise SiteConfigError(f"{source}: 'nodes.{i}.gpus' lists the same GPU id twice")


def load_site(path: str | Path | None) -> dict[str, Any]:
    """Defaults overlaid with the site YAML at ``path`` (if given), validated."""
    config = _read_yaml(DEFAULTS)
    source = str(DEFAULTS)
    if path:
        site_path = Path(path)
        site = _read_yaml(site_path)
        config = merge(config, site)
        source = str(site_path)
    validate(config, source)
    return config
