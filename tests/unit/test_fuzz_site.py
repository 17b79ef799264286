"""Fuzzing what admins write: the site YAML.

``load_site`` either returns a config that the spawner can use as it is, or raises
:class:`SiteConfigError` with one message that starts with the file and names the key at
fault; no other exception ever escapes (the hub prints that message and stops). Inputs are
random bytes and YAML-like text, random structures, and one-place mutations of the
embedded defaults. The examples are derandomized (the same inputs on every run, so CI is
deterministic); ``DESKHUB_FUZZ_EXAMPLES=2000`` runs more, ``DESKHUB_FUZZ_RANDOM=1`` draws
new ones each run.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deskhub.hub_config.site import MIN_SESSION_MEMORY, SiteConfigError, load_site
from deskhub.spawner.catalogue import Catalogue, merge_environments

FUZZ = settings(
    max_examples=int(os.environ.get("DESKHUB_FUZZ_EXAMPLES", "120")),
    derandomize=not os.environ.get("DESKHUB_FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

DEFAULTS = load_site(None)


@pytest.fixture(scope="module")
def site_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scratch file that every example overwrites (hypothesis runs them in turn)."""
    return tmp_path_factory.mktemp("fuzz-site") / "site.yaml"


def load(path: Path, content: str | bytes) -> dict[str, Any] | SiteConfigError:
    """What the hub gets from ``content``: a config, or the error it prints. Any other
    exception fails the test."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_site(path)
    except SiteConfigError as err:
        message = str(err)
        assert message.startswith(f"{path}:"), message
        assert "Traceback" not in message
        return err
    assert_usable(config)
    return config


def assert_usable(config: dict[str, Any]) -> None:
    """A config that loads is one the spawner takes as it is: its catalogue builds, and
    every session it offers has real limits (Docker takes memory below 6 MiB or a CPU
    limit below 0.01 as no limit at all)."""
    merged = merge_environments(config["environments"], {})
    catalogue = Catalogue.from_site(merged.environments)
    for env in catalogue:
        assert env.needs.memory >= MIN_SESSION_MEMORY, env
        assert env.needs.cpu >= 0.01, env
        assert env.needs.describe()
    assert [node["name"] for node in config["nodes"]]


def named_key(err: SiteConfigError, path: Path) -> str:
    """The key path a message names: the first quoted one after the file."""
    rest = str(err)[len(f"{path}:") :]
    found = re.match(r"\s*'([^']*)'", rest)
    assert found, f"the message names no key: {err}"
    return found.group(1)


# -- random bytes and YAML-like text --------------------------------------------------------
YAML_TOKENS = st.sampled_from(
    [
        "\n", "  ", "\t", ": ", "- ", "{", "}", "[", "]", ",", "'", '"', "#", "&a ", "*a",
        "!!python/object:os.system ", "!!binary ", "<<: ", "? ", "|", ">", "---\n", "...\n",
        "%YAML 1.1\n", "\x00", "\ufeff", "\ud800", "sessions", "idle_timeout", "nodes",
        "environments", "desktop", "needs", "memory", "2G", "1e400", ".nan", "-.inf", "null",
        "yes", "on", "~", "0x1F", "0o17", "2024-01-01", "12:30:00", "9" * 40, "é", "😀",
    ]
)  # fmt: skip


@FUZZ
@given(content=st.binary(max_size=200) | st.lists(YAML_TOKENS, max_size=40).map("".join))
def test_any_bytes_or_text_load_or_stop_with_one_message(site_file: Path, content: Any):
    load(site_file, content)


# -- random structures ----------------------------------------------------------------------
KEYS = (
    st.sampled_from(sorted({*DEFAULTS, "hub", "auth", "data", "nodes", "zz-unknown"}))
    | st.text(max_size=8)
    | st.integers(-2, 2)
    | st.booleans()
    | st.none()
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.dates()
    | st.sampled_from(["2G", "0", "0.001M", "unix:///nope", "tcp://", "http://x", "../etc"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)


@FUZZ
@given(site=st.dictionaries(KEYS, VALUES, max_size=4))
def test_random_structures_load_or_stop_with_one_message(site_file: Path, site: dict):
    load(site_file, yaml.safe_dump(site, allow_unicode=True))


# -- the defaults, changed in one place -----------------------------------------------------
def places(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path of a config (mappings and lists), the top level excluded."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from places(item, (*path, str(i)))


def put(config: Any, path: tuple[str, ...], value: Any) -> None:
    *parents, last = path
    for key in parents:
        config = config[int(key)] if isinstance(config, list) else config[key]
    if isinstance(config, list):
        config[int(last)] = value
    else:
        config[last] = value


# every place the defaults have, plus some they leave out
PLACES = sorted(
    {
        *places(DEFAULTS),
        ("environments", "desktop", "needs", "gpu"),
        ("environments", "desktop", "needs", "gpu_memory"),
        ("environments", "desktop", "needs", "node_labels"),
        ("environments", "desktop", "icon"),
        ("environments", "desktop", "apps"),
        ("data", "root"),
        ("data", "experiments", "exp-1"),
        ("nodes", "0", "gpus"),
        ("nodes", "0", "tls"),
        ("nodes", "0", "labels"),
        ("auth", "ldap"),
        ("placement", "prometheus"),
    }
)
# a value of another type, or a plausible value of the wrong form
WRONG = VALUES | st.sampled_from(
    [
        "2X", "-1", "0", "0.5M", "12 GB", "1e400", "tcp://10.0.0.5:2376", "unix://", "ssh://x",
        "/abs/path", "relative/path", "Bad Name", "../../etc", "spread ", "x" * 5000,
        {"exclusive": 0}, {"exclusive": 99}, [{"id": "g"}, {"id": "g"}], {"Bad Key": "v"},
        [{"name": "a", "exec": ""}], {"path": "rel"}, {"url": "ftp://x"}, True, 0.001, 1e308,
    ]
)  # fmt: skip


@FUZZ
@given(place=st.sampled_from(PLACES), value=WRONG, unknown=st.booleans())
def test_a_mistake_in_one_place_is_named_by_its_key(
    site_file: Path, place: tuple[str, ...], value: Any, unknown: bool
):
    site = copy.deepcopy(DEFAULTS)
    if unknown:  # a key the schema does not know, e.g. a misspelt or misplaced setting
        parent = place if isinstance(_at(site, place), dict) else place[:-1]
        place = (*parent, "idle_timout")
    put(site, place, value)
    result = load(site_file, yaml.safe_dump(site, allow_unicode=True))
    if isinstance(result, SiteConfigError):
        named = named_key(result, site_file)
        changed = ".".join(place)
        # the key changed, one inside the value put there, or the mapping that holds it
        assert named.startswith(changed) or changed.startswith(named), (changed, str(result))
        assert named != "(top level)", str(result)


def _at(config: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if isinstance(config, list):
            config = config[int(key)] if key.isdigit() and int(key) < len(config) else None
        elif isinstance(config, dict):
            config = config.get(key)
        else:
            return None
    return config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"sessions: {idle_timeout: \xff}\n", "is not UTF-8 text"),
        ("sessions: {1: 2, idle_timeout: 3}\n", "'sessions.1' is not a valid key"),
        ("yes: 1\n", "'True' is not a valid key: keys are text (put quotes around"),
        ("null: 1\n", "'None' is not a valid key"),
        ("placement: {image_bonus: .nan}\n", "'placement.image_bonus' is nan, not a finite"),
        ("environments: {desktop: {needs: {cpu: .inf}}}\n", "'environments.desktop.needs.cpu'"),
        ("environments: {desktop: {needs: {cpu: 0.001}}}\n", "is less than the minimum of 0.01"),
        (
            "environments: {desktop: {needs: {memory: '0.5M'}}}\n",
            "'environments.desktop.needs.memory' is '0.5M', less than the 6 MiB",
        ),
        ("sessions: {idle_timeout: " + "[" * 2000 + "]" * 2000 + "}\n", "nested too deeply"),
        ("sessions: {idle_timeout: '" + "x" * 100_000 + "'}\n", "xxxxxxx… is not of type"),
    ],
)
def test_examples_hypothesis_found_stay_fixed(site_file: Path, content: str | bytes, message: str):
    result = load(site_file, content)
    assert isinstance(result, SiteConfigError)
    assert message in str(result)
    assert len(str(result)) < 300
