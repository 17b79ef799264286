"""Pull an image onto a Docker engine and say how far it got, in words a person reads.

The engine streams one JSON event per layer step (``Pulling fs layer``, ``Downloading``
with bytes, ``Extracting``, ``Pull complete``, ``Already exists``, and ``error`` when it
fails); :class:`PullProgress` folds them into "412 of 1,830 MB (7 of 23 layers)". Used by
the spawner (progress on the spawn page) and by the pre-pull command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker.errors
from docker.utils import parse_repository_tag

MB = 1_000_000
# a layer whose bytes are all on the engine (downloaded, or there before)
_LAYER_DONE = ("Pull complete", "Already exists")
_DOWNLOADED = ("Download complete", "Verifying Checksum", "Extracting", "Pull complete")


class PullError(docker.errors.DockerException):
    """The engine reported an error while pulling (e.g. the image is not in the registry)."""


def split_ref(ref: str) -> tuple[str, str]:
    """``repo`` and ``tag`` (or ``sha256:...`` digest) of an image reference; tag
    ``latest`` when none is given. A registry's port is not taken for a tag."""
    repo, tag = parse_repository_tag(ref)
    return repo, tag or "latest"


@dataclass
class _Layer:
    current: int = 0
    total: int = 0
    status: str = ""


@dataclass
class PullProgress:
    """What one pull has done so far; fed from the pulling thread, read from anywhere."""

    ref: str
    layers: dict[str, _Layer] = field(default_factory=dict)
    digest: str = ""
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take in one event of the engine's pull stream."""
        with self._lock:
            if event.get("error") or event.get("errorDetail"):
                detail = event.get("errorDetail") or {}
                self.error = str(event.get("error") or detail.get("message") or "pull failed")
                return
            status = str(event.get("status") or "")
            if status.startswith("Digest: "):
                self.digest = status.removeprefix("Digest: ").strip()
                return
            layer_id = event.get("id")
            if not layer_id or status.startswith("Pulling from") or status.startswith("Status:"):
                return
            layer = self.layers.setdefault(str(layer_id), _Layer())
            layer.status = status
            detail = event.get("progressDetail") or {}
            if status == "Downloading":
                layer.total = int(detail.get("total") or layer.total)
                layer.current = int(detail.get("current") or layer.current)
            elif status in _DOWNLOADED:
                layer.total = max(layer.total, int(detail.get("total") or 0), layer.current)
                layer.current = layer.total

    def counts(self) -> tuple[int, int, int, int]:
        """Bytes downloaded, bytes known to be needed, layers done, layers in all."""
        with self._lock:
            layers = list(self.layers.values())
        done = sum(1 for layer in layers if layer.status in _LAYER_DONE)
        current = sum(layer.current for layer in layers)
        total = sum(layer.total for layer in layers)
        return current, total, done, len(layers)

    def fraction(self) -> float:
        """How far the pull is, 0 to 1 (by bytes once sizes are known, else by layers)."""
        current, total, done, count = self.counts()
        if total:
            return min(current / total, 1.0)
        return done / count if count else 0.0

    def describe(self) -> str:
        """E.g. "412 of 1,830 MB (7 of 23 layers)"; "" before the engine said anything."""
        current, total, done, count = self.counts()
        if not count:
            return ""
        return f"{megabytes(current, total)} ({done} of {count} layers)"

    def seconds(self) -> float:
        return time.monotonic() - self.started


def megabytes(current: int, total: int) -> str:
    """ "412 of 1,830 MB"; one decimal below 10 MB."""
    if total < 10 * MB:
        return f"{current / MB:.1f} of {total / MB:.1f} MB"
    return f"{current / MB:,.0f} of {total / MB:,.0f} MB"


def consume(events: Iterable[Mapping[str, Any]], progress: PullProgress) -> PullProgress:
    """Feed a pull's event stream to ``progress``; raise :class:`PullError` on an error."""
    for event in events:
        progress.feed(event)
        if progress.error:
            raise PullError(progress.error)
    return progress


def pull(client: docker.APIClient, ref: str, progress: PullProgress | None = None) -> PullProgress:
    """Pull ``ref`` with the low-level client, streaming; blocks (run it in a thread).

    Raises :class:`PullError` for an error the engine reports in the stream and
    ``docker.errors.APIError`` for one it answers at once (e.g. no such image).
    """
    progress = progress or PullProgress(ref)
    repo, tag = split_ref(ref)
    return consume(client.pull(repo, tag=tag, stream=True, decode=True), progress)
