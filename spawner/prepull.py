"""Pull the catalogue's images onto every node before users ask for them.

    python -m deskhub.spawner.prepull [--site FILE] [--node NAME]... [--always] [IMAGE ...]
    deploy/prepull ...   (the same, with this checkout's Python)

The nodes (TLS included) come from the site YAML (``--site``, else ``$DESKHUB_SITE_CONFIG``,
else the embedded defaults: the local engine); the images are the given references, else
the images of the site's environments that are not hidden. Every node is worked on at the
same time, its images one after the other; an image a node already holds (by this
reference) is not pulled again unless ``--always`` (which asks the registry for a newer one).
Progress (bytes and layers) is printed per node; a failing node gets one line saying why,
and the exit status is 1 if any node failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO

import docker.errors

from deskhub.hub_config.site import SiteConfigError, load_site

from .inventory import NodeConfig, node_from_spec
from .isolation import NETGUARD_IMAGE
from .nodes import PULL_TIMEOUT, engine_client
from .pulling import PullError, PullProgress, megabytes, pull


@dataclass
class NodeResult:
    name: str
    pulled: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    error: str = ""  # the whole node failed (not reachable)

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed


def site_images(site: dict) -> list[str]:
    """The images of the site's environments that users may pick, each once, and the
    session firewall's helper image when sessions are isolated (docs/security.md)."""
    images = {
        str(spec["image"])
        for spec in (site.get("environments") or {}).values()
        if spec.get("image") and not spec.get("hidden", False)
    }
    network = site.get("network") or {}
    if network.get("isolation", True):
        images.add(str(network.get("netguard_image", NETGUARD_IMAGE)))
    return sorted(images)


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, docker.errors.APIError) and err.explanation:
        text = " ".join(str(err.explanation).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Printer:
    """Lines from several threads, whole and in order."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()


def prepull_node(
    node: NodeConfig,
    images: Sequence[str],
    say: Callable[[str], None],
    *,
    always: bool = False,
    interval: float = 2.0,
    timeout: float = PULL_TIMEOUT,
) -> NodeResult:
    """Pull ``images`` onto one node, one after the other, printing progress."""
    result = NodeResult(node.name)
    try:
        client = engine_client(node, timeout)
        client.ping()
    except Exception as err:  # connection refused or timed out, TLS refused, no engine
        result.error = (
            f"its engine at {node.endpoint} does not answer ({type(err).__name__}: {_short(err)})"
        )
        say(f"{node.name}: FAILED: {result.error}")
        return result
    try:
        for ref in images:
            if not always:
                try:
                    image = client.inspect_image(ref)
                except docker.errors.NotFound:
                    pass
                else:
                    result.present.append(ref)
                    say(f"{node.name}: {ref} is already there ({image['Id'][:19]})")
                    continue
            progress = PullProgress(ref)
            say(f"{node.name}: pulling {ref}")
            done = threading.Event()

            def report(progress: PullProgress = progress, done: threading.Event = done) -> None:
                said = ""
                while not done.wait(interval):
                    text = progress.describe()
                    if text and text != said:
                        said = text
                        say(f"{node.name}: {progress.ref} {text}")

            reporter = threading.Thread(target=report, daemon=True)
            reporter.start()
            try:
                pull(client, ref, progress)
                digest = progress.digest or client.inspect_image(ref)["Id"]
            except (PullError, docker.errors.APIError) as err:
                missing = isinstance(err, docker.errors.NotFound) or "not found" in str(err)
                why = "is not in its registry" if missing else "could not be pulled"
                result.failed[ref] = f"{ref} {why} ({_short(err)})"
                say(f"{node.name}: FAILED: {result.failed[ref]}")
                continue
            finally:
                done.set()
                reporter.join()
            current, total, _, count = progress.counts()
            result.pulled.append(ref)
            say(
                f"{node.name}: pulled {ref} in {progress.seconds():.0f} s "
                f"({megabytes(current, total)}, {count} layers; {digest})"
            )
    except Exception as err:  # the node went away in the middle
        result.error = f"its engine at {node.endpoint} failed: {type(err).__name__}: {_short(err)}"
        say(f"{node.name}: FAILED: {result.error}")
    finally:
        client.close()
    return result


def prepull(
    nodes: Sequence[NodeConfig],
    images: Sequence[str],
    out: TextIO = sys.stdout,
    *,
    always: bool = False,
    interval: float = 2.0,
) -> list[NodeResult]:
    """Pull ``images`` onto every node in ``nodes``, all nodes at once; one result each."""
    say = Printer(out)
    begin = time.monotonic()
    say(f"prepull: {len(images)} image(s) onto {len(nodes)} node(s): {', '.join(images)}")
    with ThreadPoolExecutor(max(len(nodes), 1), thread_name_prefix="prepull") as pool:
        results = list(
            pool.map(
                lambda node: prepull_node(node, images, say, always=always, interval=interval),
                nodes,
            )
        )
    failed = [r for r in results if not r.ok]
    pulled = sum(len(r.pulled) for r in results)
    present = sum(len(r.present) for r in results)
    summary = (
        f"prepull: done in {time.monotonic() - begin:.0f} s: {pulled} pulled, "
        f"{present} already there"
    )
    if failed:
        reasons = [
            f"{r.name} ({r.error or '; '.join(r.failed.values())})"
            for r in sorted(failed, key=lambda r: r.name)
        ]
        summary += f"; {len(failed)} of {len(results)} node(s) FAILED: " + ", ".join(reasons)
    say(summary)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deskhub.spawner.prepull",
        description="Pull the catalogue's images onto every node of the site.",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image references (default: the images of the site's environments)",
    )
    parser.add_argument(
        "--site",
        default=os.environ.get("DESKHUB_SITE_CONFIG") or None,
        help="site YAML (default: $DESKHUB_SITE_CONFIG)",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="only this node (repeat for more)",
    )
    parser.add_argument(
        "--always", action="store_true", help="pull even images a node has (to get a newer :latest)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between progress lines of one pull (default 2)",
    )
    args = parser.parse_args(argv)
    try:
        site = load_site(args.site)
    except SiteConfigError as err:
        print(f"prepull: site configuration error: {err}", file=sys.stderr)
        return 2
    nodes = [node_from_spec(spec) for spec in site.get("nodes") or []]
    unknown = sorted(set(args.node) - {node.name for node in nodes})
    if unknown:
        print(f"prepull: no node named {', '.join(unknown)} in the site", file=sys.stderr)
        return 2
    if args.node:
        nodes = [node for node in nodes if node.name in args.node]
    images = list(dict.fromkeys(args.images)) or site_images(site)
    if not images:
        print("prepull: no images to pull (the site has no environments)", file=sys.stderr)
        return 2
    results = prepull(nodes, images, always=args.always, interval=args.interval)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
