"""Environments described by their images: the ``deskhub.*`` image labels.

An image is an environment when it carries the label ``deskhub.environment.name``. The hub
reads the labels of the images on its reachable nodes (the watchers list them at every
poll) and turns them into environment specs of exactly the site YAML's shape, checked
against the same JSON schema, so labels cannot describe what the site YAML could not.
Every value is a string, as Docker labels are; an empty value counts as absent (an image
built ``FROM`` another inherits its labels: set one to ``""`` to drop it).

==============================  ============================================================
label                           value
==============================  ============================================================
``deskhub.environment.name``    the environment's name (``^[a-z0-9][a-z0-9._-]{0,62}$``);
                                marks the image as an environment (``""``: it is not one)
``deskhub.title``               1 to 80 characters (default: the name)
``deskhub.description``         at most 300 characters
``deskhub.icon``                a ``data:image/...`` URI (base64 or URL-encoded, at most
                                64 KiB) or an ``https://`` URL
``deskhub.needs.cpu``           CPUs reserved, and the container's limit: a number > 0
                                (default 1)
``deskhub.needs.memory``        memory reserved, and the limit: ``512M``, ``4G``, ...
                                (default 2G)
``deskhub.needs.gpu``           ``none`` (default), ``shared`` (a VirtualGL desktop slot)
                                or ``exclusive:N`` (N whole GPUs, 1 to 16)
``deskhub.needs.gpu_memory``    the least memory each GPU given must have, e.g. ``16G``
``deskhub.needs.node_labels``   ``k=v,k2=v2``: labels the node must carry
``deskhub.apps``                the applications it offers, a JSON list of
                                ``{"name": "PyMca", "exec": "pymca", "gpu": false}``
                                (``gpu``: started through VirtualGL when the session has a
                                GPU; optional, default false)
``deskhub.virtualgl``           ``yes`` or ``no`` (default): the image has VirtualGL. An
                                image without it never gets ``needs.gpu: shared``.
==============================  ============================================================

These names never collide with the labels the spawner puts on session *containers*
(``deskhub.managed``, ``deskhub.user``, ``deskhub.environment``, ``deskhub.gpu``, ...,
see :func:`~deskhub.spawner.containerspec.session_labels`), which containers would
otherwise inherit from their image.

**Tag choice.** When several tags carry the same environment name, the environment runs
the ``:latest`` one if any, else the highest tag in natural order (``1.10`` above ``1.9``);
among equal tags of several repositories, the repository that sorts first. A tag held by
several nodes is read from the first reachable node by name. Images whose labels are
broken are left out (with one warning each); the environment then runs the best
remaining tag, if any.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import yaml

from deskhub.hub_config.site import SCHEMA, explain

from .units import parse_memory

PREFIX = "deskhub."
NAME = "deskhub.environment.name"
TITLE = "deskhub.title"
DESCRIPTION = "deskhub.description"
ICON = "deskhub.icon"
APPS = "deskhub.apps"
VIRTUALGL = "deskhub.virtualgl"
NEEDS_PREFIX = "deskhub.needs."
NEEDS = ("cpu", "memory", "gpu", "gpu_memory", "node_labels")
LABELS = frozenset(
    {NAME, TITLE, DESCRIPTION, ICON, APPS, VIRTUALGL, *(NEEDS_PREFIX + n for n in NEEDS)}
)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MEMORY_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGTkmgt]?i?[Bb]?$")
ICON_MAX = 64 * 1024
DATA_ICON = re.compile(r"^data:image/(png|svg\+xml|jpeg|gif|webp)(;base64)?,(.+)$", re.DOTALL)
YES_NO = {"yes": True, "true": True, "no": False, "false": False}
MAX_EXCLUSIVE = 16


class LabelProblems(ValueError):
    """An image's labels do not describe a usable environment; ``problems`` says why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _memory(value: str) -> str:
    """The size as written (the site YAML's form), if it is one of at least a byte."""
    if not MEMORY_PATTERN.match(value) or parse_memory(value) < 1:
        raise ValueError(value)
    return value


def _cpu(value: str) -> int | float:
    cpus = float(value)  # ValueError if not a number
    if not math.isfinite(cpus) or cpus <= 0:
        raise ValueError(value)
    return int(cpus) if cpus.is_integer() else cpus


def _gpu(value: str) -> str | dict[str, int]:
    if value in ("none", "shared"):
        return value
    mode, _, count = value.partition(":")
    if mode == "exclusive" and count.isdigit() and 1 <= int(count) <= MAX_EXCLUSIVE:
        return {"exclusive": int(count)}
    raise ValueError(value)


def _node_labels(value: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in value.split(","):
        key, eq, val = (part.strip() for part in pair.partition("="))
        if not eq or not NAME_PATTERN.match(key) or key in labels:
            raise ValueError(value)
        labels[key] = val
    return labels


def _icon(value: str) -> str:
    if len(value) > ICON_MAX:
        raise ValueError("longer than 64 KiB")
    if value.startswith("data:"):
        match = DATA_ICON.match(value)
        if not match:
            raise ValueError("a data: URI must hold an image (png, svg+xml, jpeg, gif, webp)")
        if match.group(2):
            try:
                base64.b64decode(match.group(3), validate=True)
            except binascii.Error as err:
                raise ValueError("its base64 data is broken") from err
        elif re.search(r"[\s\"'<>]", match.group(3)):
            raise ValueError("URL-encode its data (no spaces, quotes or angle brackets)")
        return value
    url = urllib.parse.urlsplit(value)
    if url.scheme != "https" or not url.hostname or re.search(r"[\s\"'<>]", value):
        raise ValueError("use a data:image/... URI or an https:// URL")
    return value


def _apps(value: str) -> list[dict[str, Any]]:
    apps = json.loads(value)  # ValueError if not JSON
    if not isinstance(apps, list):
        raise ValueError("not a list")
    for app in apps:
        if (
            not isinstance(app, dict)
            or not set(app) <= {"name", "exec", "gpu"}
            or not isinstance(app.get("name"), str)
            or not 1 <= len(app["name"].strip()) <= 80
            or not isinstance(app.get("exec"), str)
            or not app["exec"].strip()
            or not isinstance(app.get("gpu", False), bool)
        ):
            raise ValueError(f"bad entry {json.dumps(app)[:60]}")
    return [
        {"name": a["name"].strip(), "exec": a["exec"].strip(), "gpu": a.get("gpu", False)}
        for a in apps
    ]


_NEEDS_PARSERS = {
    "cpu": (_cpu, "is not a number of CPUs above 0 (e.g. 2 or 0.5)"),
    "memory": (_memory, "is not a memory size (e.g. 4G)"),
    "gpu": (_gpu, "is not a GPU mode: none, shared or exclusive:N (N from 1 to 16)"),
    "gpu_memory": (_memory, "is not a memory size (e.g. 16G)"),
    "node_labels": (_node_labels, "is not a list of node labels k=v,k2=v2 (lowercase keys)"),
}


def spec_from_labels(labels: Mapping[str, str], image: str) -> dict[str, Any]:
    """The site-YAML-shaped spec the labels describe, running ``image``.

    Raises :class:`LabelProblems` naming every broken label. Labels outside ``deskhub.*``
    and unknown ``deskhub.*`` labels other than ``deskhub.needs.*`` are ignored (images
    carry other tools' labels, e.g. ``deskhub.image``).
    """
    value = {k: v.strip() for k, v in labels.items() if k.startswith(PREFIX) and v.strip()}
    problems: list[str] = []
    spec: dict[str, Any] = {}
    title = value.get(TITLE)
    if title is not None:
        if len(title) > 80:
            problems.append(f"label {TITLE} is longer than 80 characters")
        spec["title"] = title
    description = value.get(DESCRIPTION)
    if description is not None:
        if len(description) > 300:
            problems.append(f"label {DESCRIPTION} is longer than 300 characters")
        spec["description"] = description
    if ICON in value:
        try:
            spec["icon"] = _icon(value[ICON])
        except ValueError as err:
            problems.append(f"label {ICON}={_shown(value[ICON])} is not a usable icon ({err})")
    spec["image"] = image
    needs: dict[str, Any] = {}
    for key in sorted(k for k in value if k.startswith(NEEDS_PREFIX)):
        need = key[len(NEEDS_PREFIX) :]
        if need not in _NEEDS_PARSERS:
            problems.append(f"label {key} is not a known need ({', '.join(NEEDS)})")
            continue
        parse, what = _NEEDS_PARSERS[need]
        try:
            needs[need] = parse(value[key])
        except ValueError:
            problems.append(f"label {key}={_shown(value[key])} {what}")
    if needs:
        spec["needs"] = needs
    if APPS in value:
        try:
            spec["apps"] = _apps(value[APPS])
        except ValueError as err:
            problems.append(
                f"label {APPS} is not a JSON list of"
                f' {{"name": ..., "exec": ..., "gpu": false}} objects ({err})'
            )
    virtualgl = value.get(VIRTUALGL, "no")
    if virtualgl.lower() not in YES_NO:
        problems.append(f"label {VIRTUALGL}={_shown(virtualgl)} is not yes or no")
    spec["virtualgl"] = YES_NO.get(virtualgl.lower(), False)
    if needs.get("gpu") == "shared" and not spec["virtualgl"]:
        problems.append(
            f"label {NEEDS_PREFIX}gpu='shared' asks for a GPU desktop slot, but the image"
            f" has no VirtualGL ({VIRTUALGL}=yes)"
        )
    if not problems:
        errors = sorted(_validator().iter_errors(spec), key=lambda e: list(e.absolute_path))
        problems += [f"the site schema refuses what they give: {explain(e)}" for e in errors]
    if problems:
        raise LabelProblems(problems)
    return spec


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    """The site schema's check of one environment (with the schema's shared definitions)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    one = schema["properties"]["environments"]["additionalProperties"]
    return jsonschema.Draft202012Validator({**one, "$defs": schema["$defs"], "required": ["image"]})


# -- choosing among images ------------------------------------------------------------------
def split_tag(tag: str) -> tuple[str, str]:
    """``registry:5000/deskhub/mx:1.2`` -> (``registry:5000/deskhub/mx``, ``1.2``)."""
    repo, colon, version = tag.rpartition(":")
    if not colon or "/" in version:
        return tag, "latest"
    return repo, version


def _natural(version: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", version) if p)


def best_tag(tags: Iterable[str]) -> str:
    """``:latest`` if any, else the highest tag (natural order); then the first repository."""
    ranked = [((split_tag(t)[1] == "latest", _natural(split_tag(t)[1])), t) for t in tags]
    top = max(rank for rank, _ in ranked)
    return min(t for rank, t in ranked if rank == top)


def environment_image_entries(images: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """What a node's snapshot keeps of ``APIClient.images()``: the tagged images that name
    an environment, with their ``deskhub.*`` labels only."""
    kept = []
    for image in images:
        labels = image.get("Labels") or {}
        tags = [t for t in image.get("RepoTags") or [] if t and t != "<none>:<none>"]
        if tags and str(labels.get(NAME, "")).strip():
            kept.append(
                {
                    "Id": image.get("Id", ""),
                    "RepoTags": tags,
                    "Labels": {k: str(v) for k, v in labels.items() if k.startswith(PREFIX)},
                }
            )
    return tuple(kept)


def environments_from_images(
    images: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Environment specs (site YAML shape, by name) from ``APIClient.images()`` entries,
    and one warning sentence per broken image (or ambiguous environment name).

    ``images`` may hold several nodes' lists one after the other: a tag's first entry wins.
    """
    tags_of: dict[str, list[str]] = {}  # image id -> its tags
    labels_of: dict[str, Mapping[str, str]] = {}
    seen: set[str] = set()
    for image in environment_image_entries(images):
        image_id = image["Id"] or image["RepoTags"][0]
        fresh = [t for t in image["RepoTags"] if t not in seen]
        seen.update(fresh)
        if fresh:
            tags_of.setdefault(image_id, []).extend(fresh)
            labels_of.setdefault(image_id, image["Labels"])

    valid: dict[str, dict[str, dict[str, Any]]] = {}  # name -> image id -> spec
    broken: list[tuple[str, str, list[str]]] = []  # (name, shown tag, problems)
    for image_id, tags in tags_of.items():
        shown = best_tag(tags)
        name = labels_of[image_id][NAME].strip()
        problems = []
        if not NAME_PATTERN.match(name):
            problems.append(
                f"label {NAME}={_shown(name)} is not an allowed name (lowercase letters,"
                " digits, '.', '_' and '-', at most 63, starting with a letter or digit)"
            )
        try:
            spec = spec_from_labels(labels_of[image_id], shown)
        except LabelProblems as err:
            problems += err.problems
        if problems:
            broken.append((name, shown, problems))
        else:
            valid.setdefault(name, {})[image_id] = spec

    environments: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for name in sorted(valid):
        candidates = {t: image_id for image_id in valid[name] for t in tags_of[image_id]}
        chosen = best_tag(candidates)
        environments[name] = {**valid[name][candidates[chosen]], "image": chosen}
        repo = split_tag(chosen)[0]
        strays = sorted(
            best_tag(tags_of[i])
            for i in valid[name]
            if not any(split_tag(t)[0] == repo for t in tags_of[i])
        )
        if strays:
            warnings.append(
                f"environment '{name}' is labelled on images of several repositories"
                f" ({chosen}, {', '.join(strays)}); it runs {chosen}. An image built FROM"
                f' another inherits its labels: give it its own {NAME} (or "" for none)'
            )
    for name, shown, problems in broken:
        chosen = environments.get(name, {}).get("image")
        tail = f"environment '{name}' runs {chosen} instead" if chosen else None
        warnings.append(
            f"image {shown}: {'; '.join(problems)}; {tail or 'the environment is not offered'}"
        )
    return environments, sorted(warnings)
