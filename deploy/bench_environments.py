"""The ``environments`` section of deskhub's benchmark: for every environment image on the
host engine (an image with the label ``deskhub.environment.name``, ``deskhub/*:latest``),
its size, what it adds to ``deskhub/base``, and what a user waits for: spawn to ready and
the first desktop pixels in Chromium, through one deskhub hub whose catalogue comes from
the images' labels (no site YAML entry).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from tests.harness import Hub

BASE = "deskhub/base:latest"
NAME_LABEL = "deskhub.environment.name"


@dataclass(frozen=True)
class EnvironmentImage:
    environment: str
    image: str
    size_mb: float
    unique_mb: float  # the layers it does not share with deskhub/base


@dataclass(frozen=True)
class EnvironmentTiming:
    environment: str
    spawn: list[float]
    pixels: list[float]
    memory_mib: float


def history_steps(client: docker.DockerClient, image: str) -> list[tuple[Any, str, int]]:
    return [(h["Created"], h["CreatedBy"], h["Size"]) for h in client.api.history(image)]


def environment_images(client: docker.DockerClient) -> list[EnvironmentImage]:
    """deskhub's own environment images (``deskhub/NAME:latest``), base first."""
    base = set(history_steps(client, BASE))
    found = []
    for image in client.images.list(filters={"label": NAME_LABEL}):
        tags = [t for t in image.tags if t.startswith("deskhub/") and t.endswith(":latest")]
        name = image.labels.get(NAME_LABEL, "")
        if not tags or not name:
            continue
        own = [s for s in history_steps(client, tags[0]) if s not in base]
        size = image.attrs["Size"]
        unique = size if tags[0] == BASE else sum(s[2] for s in own)
        found.append(EnvironmentImage(name, tags[0], size / 1e6, unique / 1e6))
    return sorted(found, key=lambda e: (e.image != BASE, e.image))


def measure(
    work: Path,
    network: str,
    browser: Any,
    images: list[EnvironmentImage],
    runs: int,
    open_desktop: Callable[[Hub, str, Any], tuple[float, float]],
) -> list[EnvironmentTiming]:
    """Each environment ``runs`` times: spawn to ready, then desktop pixels and memory."""
    hub = Hub(work, {}, prefix="deskenv", network=network)
    timings = []
    try:
        hub.start()
        for number, env in enumerate(images):
            user = f"envbench{number}"  # a name DockerSpawner does not escape
            hub.ensure_user(user)
            spawns, pixels, memory = [], [], 0.0
            for _ in range(runs):
                start = time.perf_counter()
                hub.spawn_ready(user, {"environment": env.environment})
                spawns.append(time.perf_counter() - start)
                seconds, memory = open_desktop(hub, user, browser)
                pixels.append(seconds)
                hub.stop_server(user)
            print(f"[bench] {env.environment}: spawn {spawns}, pixels {pixels}", flush=True)
            timings.append(EnvironmentTiming(env.environment, spawns, pixels, memory))
    finally:
        hub.cleanup()
    return timings


def markdown(
    images: list[EnvironmentImage], timings: list[EnvironmentTiming], when: str, machine: str
) -> str:
    by_name = {t.environment: t for t in timings}

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s" if values else "n/a"

    lines = [
        "## Environments",
        "",
        f"Measured {when} on: {machine}.",
        "",
        "Every environment image on the engine, offered by one deskhub hub from its labels. "
        "*Unique* is the size of the layers the image does not share with `deskhub/base` "
        "(what a node that already has base downloads). *Time to desktop* is spawn to ready "
        "plus opening `/user/NAME/desktop/` in Chromium until the desktop is drawn; "
        "memory is the idle session with the desktop open (as in *Sessions*).",
        "",
        "| environment | image | size | unique | spawn to ready | desktop pixels "
        "| time to desktop | idle memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env in images:
        t = by_name.get(env.environment)
        if t is None:
            continue
        total = [s + p for s, p in zip(t.spawn, t.pixels, strict=True)]
        lines.append(
            f"| {env.environment} | `{env.image}` | {env.size_mb:.0f} MB | "
            f"{env.unique_mb:.0f} MB | {median(t.spawn)} | {median(t.pixels)} | "
            f"{median(total)} | {t.memory_mib:.0f} MiB |"
        )
    runs = max((len(t.spawn) for t in timings), default=0)
    lines += ["", f"Medians of {runs} run(s) per environment."]
    return "\n".join(lines)
