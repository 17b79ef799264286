"""One session cannot starve another: memory, CPU and process limits on every session, and
a memory hog and a fork bomb in user A's session leave user B's kernel and the hub
answering (issue 6, item 3). Two real desktop sessions on the local engine, on a hub of
this module's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import jupyterclient
from tests.conftest import running
from tests.harness import Hub

pytestmark = pytest.mark.docker

GiB = 1024**3
PIDS_LIMIT = 256
CPU = 0.5
A, B = "hoggy", "bystander"
# a generous bound that only catches a hang: B's round trips take milliseconds
ANSWER_WITHIN = 10.0
HOG = """
import sys
chunks = []
for i in range(64):                      # 4 GiB, four times the session's memory
    chunks.append(b"\\1" * (64 << 20))    # written, so really resident
    print(len(chunks) * 64, "MiB", flush=True)
print("survived", flush=True)
"""
# the classic, in bash (dash exits when a fork fails; bash reports it and goes on), re-lit
# by its first shell (the exec's main process) should every branch die out at the limit
FORK_BOMB = "bomb() { bomb | bomb & }; while :; do bomb; done"


def resources_site() -> dict[str, Any]:
    return {
        "environments": {
            "desktop": {
                "title": "Desktop",
                "image": "deskhub/base:latest",
                "default": True,
                "needs": {"cpu": CPU, "memory": "1G"},
            },
            "xfm": {"hidden": True},
        },
        "sessions": {"idle_timeout": 0, "start_timeout": 120, "pids_limit": PIDS_LIMIT},
    }


@pytest.fixture(scope="module")
def res_hub(tmp_path_factory: pytest.TempPathFactory, docker_client) -> Iterator[Hub]:
    work: Path = tmp_path_factory.mktemp("resources-hub")
    instance = Hub(work, resources_site(), prefix="deskhubres", network="deskhub-res")
    with running(instance):
        for user in (A, B):
            instance.ensure_user(user)
            response = instance.spawn(user, {"environment": "desktop"})
            assert response.status_code in (201, 202), response.text
        for user in (A, B):
            instance.wait_ready(user)
        yield instance


@pytest.fixture(scope="module")
def b_kernel(res_hub: Hub) -> Iterator[str]:
    kernel = jupyterclient.start_kernel(server_url(res_hub, B), res_hub.token)
    yield kernel
    jupyterclient.delete_kernel(server_url(res_hub, B), res_hub.token, kernel)


def server_url(hub: Hub, user: str) -> str:
    return f"{hub.url}/user/{user}"


def stats(hub: Hub, user: str) -> dict[str, Any]:
    return hub.container(user).stats(stream=False, one_shot=True)


def oom_events(hub: Hub, user: str, since: datetime) -> list[dict[str, Any]]:
    """The engine's ``oom`` events for the user's container since ``since``."""
    events = hub.docker.events(
        since=since,
        until=datetime.now(UTC) + timedelta(seconds=2),  # the API takes whole seconds
        filters={"event": "oom", "container": hub.container(user).id},
        decode=True,
    )
    return list(events)


def b_keeps_answering(hub: Hub, kernel: str, until: Callable[[], bool], least: int = 5) -> int:
    """Round trips to B's kernel and to the hub's API until ``until()`` (and at least
    ``least`` of them), each bounded by ``ANSWER_WITHIN``; how many were made."""
    done = 0
    while done < least or not until():
        out = jupyterclient.execute(
            server_url(hub, B), hub.token, kernel, "print(sum(range(1000)))", ANSWER_WITHIN
        )
        assert out == "499500\n"
        assert requests.get(f"{hub.url}/hub/api/", timeout=ANSWER_WITHIN).status_code == 200
        done += 1
        time.sleep(0.2)
    return done


def test_every_session_has_memory_cpu_and_process_limits(res_hub: Hub):
    for user in (A, B):
        host = res_hub.container(user).attrs["HostConfig"]
        assert host["Memory"] == GiB, user
        assert host["MemorySwap"] == GiB, user  # no swap beyond its memory
        assert host["NanoCpus"] == int(CPU * 1e9), user
        assert host["PidsLimit"] == PIDS_LIMIT, user
        # and the kernel enforces them: what the engine reads back from the cgroup
        measured = stats(res_hub, user)
        assert measured["memory_stats"]["limit"] == GiB, user
        assert measured["pids_stats"]["limit"] == PIDS_LIMIT, user


def test_a_memory_hog_in_a_is_killed_in_a_alone(res_hub: Hub, b_kernel: str):
    since = datetime.now(UTC)
    hog: dict[str, Any] = {}

    def run_hog() -> None:
        result = res_hub.container(A).exec_run(["python3", "-c", HOG], user="1000:1000")
        hog["code"], hog["output"] = result.exit_code, result.output.decode(errors="replace")

    thread = threading.Thread(target=run_hog, daemon=True)
    thread.start()
    rounds = b_keeps_answering(res_hub, b_kernel, lambda: not thread.is_alive())
    thread.join(60)
    assert not thread.is_alive(), "the memory hog neither finished nor was killed"
    # the kernel's OOM killer took the hog (SIGKILL) before it got far past 1 GiB
    assert hog["code"] == 137, hog
    assert "survived" not in hog["output"]
    reached = [int(line.split()[0]) for line in hog["output"].split("\n") if "MiB" in line]
    assert reached and max(reached) < 1024, hog["output"][-300:]
    assert oom_events(res_hub, A, since), "no OOM event for A's container"
    assert not oom_events(res_hub, B, since), "B's container had an OOM"
    # A's own server survived its hog; B's kernel answered all along
    assert res_hub.container(A).status == "running"
    assert res_hub.user_get(A, "api/status").status_code == 200
    assert rounds >= 5
    print(f"memory hog: exit {hog['code']} at {max(reached)} MiB; B answered {rounds} times")


def test_a_fork_bomb_in_a_stops_at_its_process_limit(res_hub: Hub, b_kernel: str):
    container = res_hub.container(A)
    bomb = threading.Thread(
        target=container.exec_run, args=(["bash", "-c", FORK_BOMB],), kwargs={"user": "1000:1000"}
    )
    bomb.daemon = True  # it returns when A's container is stopped
    bomb.start()
    seen: list[int] = []
    give_up = time.monotonic() + 30

    def sample_until_full() -> bool:
        seen.append(stats(res_hub, A)["pids_stats"]["current"])
        return max(seen) >= PIDS_LIMIT - 8 or time.monotonic() > give_up

    try:
        rounds = b_keeps_answering(res_hub, b_kernel, sample_until_full, least=10)
        assert rounds >= 5
        # the bomb filled A's process table up to its limit, and never past it
        assert max(seen) <= PIDS_LIMIT, seen
        assert max(seen) >= PIDS_LIMIT - 8, seen
        assert bomb.is_alive(), "the fork bomb ended by itself"
        assert stats(res_hub, B)["pids_stats"]["current"] < PIDS_LIMIT // 2
        assert res_hub.container(B).status == "running"
        print(f"fork bomb: A ran {max(seen)} of {PIDS_LIMIT} processes; B answered {rounds} times")
    finally:
        # the user (or an admin) can still stop the bombed session through the hub
        begin = time.monotonic()
        res_hub.stop_server(A, timeout=90)
        print(f"fork bomb: A stopped through the hub in {time.monotonic() - begin:.1f} s")
    assert not [c for c in res_hub.containers() if c.name == f"{res_hub.prefix}-{A}"]
    out = jupyterclient.execute(server_url(res_hub, B), res_hub.token, b_kernel, "print('ok')")
    assert out == "ok\n"
    assert requests.get(f"{res_hub.url}/hub/api/", timeout=ANSWER_WITHIN).ok


def test_b_desktop_answers_after_a_was_bombed(res_hub: Hub):
    begin = time.monotonic()
    banner = jupyterclient.desktop_handshake(server_url(res_hub, B), res_hub.token, timeout=60)
    assert banner.startswith(b"RFB 003.00"), banner
    print(f"B's desktop greeted in {time.monotonic() - begin:.1f} s: {banner!r}")


def test_the_kernel_client_reports_an_error_reply(res_hub: Hub, b_kernel: str):
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        jupyterclient.execute(server_url(res_hub, B), res_hub.token, b_kernel, "1 / 0")
    with pytest.raises(TimeoutError):
        jupyterclient.execute(
            server_url(res_hub, B), res_hub.token, b_kernel, "import time; time.sleep(5)", 1
        )
