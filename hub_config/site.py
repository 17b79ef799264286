"""Layered site configuration: embedded defaults, then the site YAML, validated by a schema.

``load_site`` returns plain data or raises :class:`SiteConfigError`, whose message names the
file and the offending key, so a typo stops the hub with one readable line.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import math
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from deskhub.spawner.isolation import AllowRuleError, parse_allowed
from deskhub.spawner.units import format_memory, parse_memory

HERE = Path(__file__).parent
DEFAULTS = HERE / "defaults.yaml"
SCHEMA = HERE / "site-schema.yaml"

# the least memory Docker gives a container (it refuses a smaller limit at every start)
MIN_SESSION_MEMORY = 6 * 1024**2
# a value shown in a message is cut to this many characters
SHOWN_CHARS = 60


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
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SiteConfigError(f"{path}: cannot read site config ({err.strerror})") from err
    except UnicodeDecodeError as err:
        raise SiteConfigError(
            f"{path}: is not UTF-8 text (byte {err.start} cannot be decoded)"
        ) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SiteConfigError(f"{path}:{where} is not valid YAML: {err}") from err
    except RecursionError as err:
        raise SiteConfigError(f"{path}: is nested too deeply to be a site config") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteConfigError(f"{path}: the top level must be a mapping of settings")
    problem = _plain_data_problem(data)
    if problem:
        raise SiteConfigError(f"{path}: {problem}")
    return data


def _plain_data_problem(data: Any) -> str:
    """What keeps YAML data from being JSON-like settings ("" if nothing): a key that is not
    text (``1:``, ``yes:``, ``null:``), or a number that is not finite (``.inf``, ``.nan``).
    The schema (JSON Schema) cannot say either."""
    stack: list[tuple[list[str], Any]] = [([], data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    where = ".".join([*path, str(key)])
                    return (
                        f"'{where}' is not a valid key: keys are text (put quotes around"
                        " a name such as 1, yes, on or null)"
                    )
                stack.append(([*path, key], item))
        elif isinstance(value, list):
            stack.extend(([*path, str(i)], item) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            return f"'{'.'.join(path) or '(top level)'}' is {value}, not a finite number"
    return ""


def _shown(value: Any) -> str:
    """``repr(value)``, cut to :data:`SHOWN_CHARS` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


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
    shown = _shown(error.instance)
    if error.validator == "pattern":
        return f"has the value {shown}, which is not of the expected form"
    if error.validator == "oneOf" and "description" in error.schema:
        return f"must be {error.schema['description']}, not {shown}"
    if error.validator == "oneOf":
        return f"has the value {shown}, which is not one of its accepted forms"
    if error.validator == "enum":
        return f"must be one of {error.validator_value}, not {shown}"
    # jsonschema's own message starts with the whole value: show it cut
    return error.message.replace(repr(error.instance), shown, 1)


def explain(error: jsonschema.ValidationError) -> str:
    """One error of the schema as the hub prints it: the key's path, then what is wrong."""
    return f"'{_key_path(error)}' {_describe(error)}"


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The schema's validator, read once (parsing the schema's YAML takes ~0.1 s)."""
    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text()))


def validate(config: Mapping[str, Any], source: str) -> None:
    validator = _validator()
    try:
        errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    except RecursionError as err:
        raise SiteConfigError(f"{source}: is nested too deeply to be a site config") from err
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
    for name, env in environments.items():
        memory = (env.get("needs") or {}).get("memory")
        if memory is not None and parse_memory(memory) < MIN_SESSION_MEMORY:
            raise SiteConfigError(
                f"{source}: 'environments.{name}.needs.memory' is {_shown(memory)}, less than"
                f" the {format_memory(MIN_SESSION_MEMORY)} a session needs at least (e.g. 2G)"
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
    _check_web(config.get("hub", {}), source)
    for i, entry in enumerate(config.get("network", {}).get("allow", [])):
        try:  # host names are resolved when the rules are made, on each node's first session
            parse_allowed(entry, resolve=lambda host: ["192.0.2.1"])
        except AllowRuleError as err:
            raise SiteConfigError(f"{source}: 'network.allow.{i}': {err}") from None


def _check_web(hub: Mapping[str, Any], source: str) -> None:
    """``hub.subdomain_host`` is a bare origin; with ``hub.tls`` the hub's URLs are https."""
    subdomain_host = hub.get("subdomain_host")
    if subdomain_host:
        problem = subdomain_host_problem(subdomain_host)
        if problem:
            raise SiteConfigError(
                f"{source}: 'hub.subdomain_host' is {_shown(subdomain_host)}: {problem}"
                " (e.g. https://deskhub.example.org)"
            )
    if "tls" in hub:
        for key in ("bind_url", "subdomain_host"):
            url = hub.get(key, "")
            if url and not url.startswith("https://"):
                raise SiteConfigError(
                    f"{source}: 'hub.{key}' is {_shown(url)} but 'hub.tls' is set:"
                    " the hub serves https, so write https://"
                )


def subdomain_host_problem(url: str) -> str:
    """Why ``url`` cannot be ``subdomain_host`` ("" if it can): it must be
    ``http(s)://HOST[:PORT]`` with a DNS name (users get ``NAME.HOST``) and nothing else."""
    parsed = urlsplit(url)
    try:
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return "it must start with https:// (or http://) and a host name"
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or "?" in url:
        return "it must not have a path, query or fragment"
    if parsed.username is not None or parsed.password is not None:
        return "it must not hold a user name or password"
    if _is_ip_address(parsed.hostname) or "." not in parsed.hostname:
        return "it must be a DNS name with a dot, under which users get NAME.HOST"
    return ""


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_tls_files(hub: Mapping[str, Any], source: str) -> None:
    """``hub.tls``'s certificate and key can be read and belong together."""
    tls = hub.get("tls")
    if not tls:
        return
    for key in ("cert", "key"):
        try:
            with open(tls[key], "rb"):
                pass
        except OSError as err:
            raise SiteConfigError(
                f"{source}: 'hub.tls.{key}' {tls[key]} cannot be read ({err.strerror})"
            ) from None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls["cert"], tls["key"])
    except ssl.SSLError as err:
        raise SiteConfigError(
            f"{source}: 'hub.tls': {tls['cert']} and {tls['key']} are not a PEM certificate"
            f" and its private key ({err.reason or err})"
        ) from None


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
    check_tls_files(config.get("hub", {}), source)
    return config
