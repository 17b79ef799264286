import contextlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deskhub.spawner.catalogue import Needs
from deskhub.spawner.inventory import NodeConfig
from deskhub.spawner.nodes import Node, NodePool, sessions_from_containers
from deskhub.spawner.placement import (
    Gpu,
    NodeSnapshot,
    NoPlacement,
    Policy,
    Reservation,
    place,
)

GiB = 1024**3
A40 = [Gpu(f"GPU-{i}", "A40", 48 * GiB, 4) for i in range(4)]
SHARED = Needs(1, 2 * GiB, gpu="shared")


def node(name, cpus=8, memory=32 * GiB, sessions=(), reachable=True, images=(), **kw):
    return NodeSnapshot(
        name=name,
        reachable=reachable,
        cpus=cpus,
        memory=memory,
        sessions={f"u{i}/": r for i, r in enumerate(sessions)},
        images=frozenset(images),
        **kw,
    )


def test_least_loaded_node_wins_and_reason_says_why():
    busy = node("a", sessions=[Reservation(4, 8 * GiB)])
    idle = node("b", images=["deskhub/base:latest"])
    placement = place(Needs(1, 2 * GiB), [busy, idle], image="deskhub/base:latest")
    assert placement.node == "b"
    assert placement.reason == "b: 8 CPUs and 32 GiB free, 0 sessions running, image already there"


def test_tenths_of_a_cpu_fill_a_node_exactly():
    # found by the 40-user load benchmark: the sum of twenty 0.1 is 2.0000000000000004
    tenth = Needs(0.1, GiB)
    full = node("a", cpus=2, sessions=[Reservation(0.1, GiB)] * 19)
    assert place(tenth, [full]).node == "a"
    with pytest.raises(NoPlacement, match="no CPUs free"):
        place(tenth, [node("a", cpus=2, sessions=[Reservation(0.1, GiB)] * 20)])


def test_ties_are_broken_by_name():
    assert place(Needs(), [node("c"), node("a"), node("b")]).node == "a"


def test_unreachable_draining_full_and_unlabelled_nodes_are_skipped():
    nodes = [
        node("down", reachable=False),
        node("drained", draining=True),
        node("full", cpus=2, sessions=[Reservation(2, GiB)]),
        node("other-beamline", labels={"beamline": "xfm"}),
        node("ok", cpus=2, labels={"beamline": "mx"}),
    ]
    assert place(Needs(1, GiB, node_labels=(("beamline", "mx"),)), nodes).node == "ok"


def test_a_node_with_the_image_is_preferred_unless_much_busier():
    image = "deskhub/mx:1"
    has_it = node("b", sessions=[Reservation(1, 4 * GiB)], images=[image])
    empty = node("a")
    assert place(Needs(1, GiB), [has_it, empty], image=image).node == "b"
    crowded = node("b", sessions=[Reservation(6, 24 * GiB)], images=[image])
    assert place(Needs(1, GiB), [crowded, empty], image=image).node == "a"
    assert (
        place(Needs(1, GiB), [has_it, empty], image=image, policy=Policy("spread", 0)).node == "a"
    )


def test_pack_fills_the_fullest_node_that_fits():
    nodes = [node("a"), node("b", sessions=[Reservation(6, 8 * GiB)]), node("c", cpus=2)]
    assert place(Needs(1, GiB), nodes, policy=Policy("pack", 0)).node == "b"
    assert place(Needs(4, GiB), nodes, policy=Policy("pack", 0)).node == "a"


def test_live_load_counts_as_well_as_reservations():
    hot = node("a", load=7.0)  # something outside deskhub keeps 7 of 8 CPUs busy
    cool = node("b", sessions=[Reservation(2, 4 * GiB)], load=1.0)
    placement = place(Needs(1, GiB), [hot, cool])
    assert placement.node == "b"
    assert "load 0.12" in placement.reason


def test_shared_desktops_spread_over_gpus_and_the_reason_names_the_slot():
    sessions = [Reservation(1, GiB, "shared", ("GPU-0",))] * 2 + [
        Reservation(1, GiB, "shared", ("GPU-1",))
    ]
    gpu_node = node("gpu-1", gpus=tuple(A40[:2]), sessions=sessions, load=3.2)
    placement = place(SHARED, [gpu_node])
    assert placement.gpus == ("GPU-1",)
    assert placement.reason.startswith(
        "gpu-1: GPU 1 (A40) has 3 of 4 desktop slots free, 5 CPUs and 29 GiB free, load 0.40"
    )
    packed = place(SHARED, [gpu_node], policy=Policy("pack"))
    assert packed.gpus == ("GPU-0",)


def test_exclusive_gpus_are_whole_and_never_shared():
    sessions = [
        Reservation(1, GiB, "shared", ("GPU-0",)),
        Reservation(1, GiB, "exclusive", ("GPU-2",)),
    ]
    gpu_node = node("gpu-1", gpus=tuple(A40), sessions=sessions)
    placement = place(Needs(2, 4 * GiB, gpu="exclusive", gpus=2), [gpu_node])
    assert placement.gpus == ("GPU-1", "GPU-3")
    assert placement.reason.startswith("gpu-1: GPUs 1, 3 (A40) free for you alone")
    with pytest.raises(NoPlacement):
        place(Needs(1, GiB, gpu="exclusive", gpus=3), [gpu_node])
    # a desktop cannot take a slot on the GPU held exclusively
    full = node("gpu-2", gpus=(A40[0],), sessions=[Reservation(1, GiB, "exclusive", ("GPU-0",))])
    with pytest.raises(
        NoPlacement, match="the only GPU's desktop slots are taken; try again later or pick a CPU"
    ):
        place(SHARED, [full])


def test_gpu_memory_is_a_filter():
    small = node("small", gpus=(Gpu("GPU-s", "T4", 16 * GiB),))
    big = node("big", gpus=(Gpu("GPU-b", "A100", 80 * GiB),), sessions=[Reservation(6, GiB)])
    needs = Needs(1, GiB, gpu="exclusive", gpus=1, gpu_memory=40 * GiB)
    assert place(needs, [small, big]).gpus == ("GPU-b",)


@pytest.mark.parametrize(
    ("needs", "nodes", "message"),
    [
        (Needs(2, 4 * GiB), [node("a", reachable=False)], "1 node is not answering; try again"),
        (Needs(2, 4 * GiB), [node("a", cpus=1), node("b", cpus=1)], "2 nodes have no CPUs free"),
        (Needs(2, 4 * GiB), [node("a", memory=GiB)], "1 node is out of memory; try again later."),
        (Needs(), [node("a", draining=True)], "1 node is closed for maintenance"),
        ([], [], "No compute node is configured"),
        (
            Needs(1, GiB, gpu="exclusive", gpus=1),
            [
                node(
                    f"g{i}",
                    gpus=tuple(A40[2 * i : 2 * i + 2]),
                    sessions=[
                        Reservation(1, GiB, "exclusive", (g.id,)) for g in A40[2 * i : 2 * i + 2]
                    ],
                )
                for i in range(2)
            ]
            + [node("cpu-only")],
            "Cannot start now: all 4 GPUs are in use and 1 node lacks a GPU;"
            " try again later or pick a CPU environment.",
        ),
        (
            Needs(1, GiB, gpu="exclusive", gpus=1, gpu_memory=80 * GiB),
            [node("g", gpus=tuple(A40))],
            "1 node lacks a GPU with 80 GiB; pick another environment or ask your administrator.",
        ),
        (
            Needs(1, GiB, node_labels=(("beamline", "mx"),)),
            [node("a"), node("b", labels={"beamline": "xfm"})],
            "2 nodes are not for beamline=mx; pick another environment",
        ),
    ],
)
def test_nothing_fits_says_why_in_one_sentence(needs, nodes, message):
    with pytest.raises(NoPlacement, match=message.replace("(", r"\(")) as caught:
        place(needs if needs != [] else Needs(), nodes)
    assert str(caught.value).count(".") <= 1


def test_a_node_tried_already_is_not_chosen_again():
    assert place(Needs(), [node("a"), node("b")], exclude=frozenset({"a"})).node == "b"


def test_sessions_are_read_from_container_labels():
    containers = [
        {
            "Id": "1",
            "Labels": {
                "deskhub.managed": "true",
                "deskhub.user": "alice",
                "deskhub.server": "",
                "deskhub.reserved.cpu": "2",
                "deskhub.reserved.memory": "4294967296",
                "deskhub.gpu": "exclusive",
                "deskhub.gpus": "GPU-1,GPU-3",
            },
        },
        {"Id": "2", "Labels": {"com.example": "x"}},
        {"Id": "3", "Labels": {"deskhub.managed": "true", "deskhub.reserved.cpu": "lots"}},
    ]
    assert sessions_from_containers(containers) == {
        "alice/": Reservation(2.0, 4 * GiB, "exclusive", ("GPU-1", "GPU-3"))
    }


# -- properties: capacity is never exceeded, an exclusive GPU never given twice ----------
def check_invariants(snapshot: NodeSnapshot) -> None:
    assert snapshot.reserved_cpu <= snapshot.cpus + 1e-9
    assert snapshot.reserved_memory <= snapshot.memory
    for gpu in snapshot.gpus:
        holders = [r for r in snapshot.sessions.values() if gpu.id in r.gpus]
        exclusive = [r for r in holders if r.gpu == "exclusive"]
        assert len(exclusive) <= 1
        assert not (exclusive and len(holders) > 1), f"{gpu.id} exclusive and shared"
        assert len(holders) <= max(gpu.desktop_slots, len(exclusive))


needs_strategy = st.one_of(
    st.builds(Needs, st.sampled_from([0.5, 1, 2, 4]), st.integers(1, 8).map(lambda g: g * GiB)),
    st.builds(
        lambda c, m: Needs(c, m * GiB, gpu="shared"), st.sampled_from([0.5, 1]), st.integers(1, 4)
    ),
    st.builds(
        lambda n, mem: Needs(1, GiB, gpu="exclusive", gpus=n, gpu_memory=mem * GiB),
        st.integers(1, 3),
        st.sampled_from([0, 24, 80]),
    ),
)
node_strategy = st.tuples(
    st.integers(1, 16),
    st.integers(1, 64),
    st.lists(
        st.builds(
            Gpu,
            st.uuids().map(str),
            st.just("X"),
            st.sampled_from([24 * GiB, 80 * GiB]),
            st.integers(0, 4),
        ),
        max_size=4,
    ),
    st.sampled_from(["spread", "pack"]),
)


@given(st.lists(node_strategy, min_size=1, max_size=5), st.lists(needs_strategy, max_size=60))
def test_capacity_and_gpus_are_never_overcommitted(node_specs, requests):
    policy = Policy(node_specs[0][3])
    nodes = {
        f"n{i}": node(f"n{i}", cpus=c, memory=m * GiB, gpus=tuple(g))
        for i, (c, m, g, _) in enumerate(node_specs)
    }
    for i, needs in enumerate(requests):
        try:
            placement = place(needs, nodes.values(), policy=policy)
        except NoPlacement:
            continue
        chosen = nodes[placement.node]
        assert len(placement.gpus) == needs.gpus
        nodes[placement.node] = chosen.with_sessions({f"s{i}/": placement.reservation(needs)})
        check_invariants(nodes[placement.node])


def fake_pool(n_nodes: int) -> NodePool:
    """A pool of nodes whose watchers are replaced by fixed snapshots (no engine)."""
    pool = NodePool(
        Node(NodeConfig(name=f"n{i}", endpoint=f"tcp://192.0.2.{i}:2376")) for i in range(n_nodes)
    )
    for node_ in pool.nodes.values():
        node_.snapshot = node(node_.name, cpus=8, memory=32 * GiB, gpus=tuple(A40[:2]))
    return pool


@settings(max_examples=20, deadline=None)
@given(st.lists(needs_strategy, min_size=10, max_size=40), st.integers(2, 8))
def test_concurrent_decisions_never_share_an_exclusive_gpu(requests, threads):
    pool = fake_pool(2)
    barrier = threading.Barrier(threads)

    def worker(k: int) -> None:
        barrier.wait()
        for i, needs in enumerate(requests[k::threads]):
            with contextlib.suppress(NoPlacement):
                pool.decide(f"t{k}-{i}/", needs, "")

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for snapshot in pool.snapshots():
        check_invariants(snapshot)


def test_measured_gpu_use_steers_desktops_to_the_quieter_gpu():
    gpus = (Gpu("GPU-0", "A40", 48 * GiB, 4), Gpu("GPU-1", "A40", 48 * GiB, 4))
    busy = {"GPU-0": 0.9, "GPU-1": 0.1}
    snapshot = node("g", gpus=gpus, gpu_busy=busy)
    placement = place(SHARED, [snapshot])
    assert placement.gpus == ("GPU-1",)
    assert "GPU 1 (A40) has 4 of 4 desktop slots free (busy 10%)" in placement.reason
    # a GPU whose memory others' desktops hold is skipped for a session that needs memory
    full = node("g", gpus=gpus, gpu_memory_free={"GPU-0": 40 * GiB, "GPU-1": 2 * GiB})
    assert place(Needs(1, GiB, gpu="shared", gpu_memory=8 * GiB), [full]).gpus == ("GPU-0",)


def test_a_stopped_session_frees_its_node_before_the_next_poll():
    """Stop a 2-CPU session on a 2-CPU node, start another at once: it fits."""
    pool = fake_pool(1)
    only = pool.nodes["n0"]
    only.snapshot = node("n0", cpus=2, memory=8 * GiB, sessions=[Reservation(2, GiB)])
    only.reserve("b/", Reservation(1, GiB))  # a spawn in flight
    with pytest.raises(NoPlacement):
        pool.decide("c/", Needs(2, GiB), "")
    only.stopped("u0/")
    only.stopped("b/")
    assert only.snapshot.sessions == {} and only.planning_snapshot().sessions == {}
    assert pool.decide("c/", Needs(2, GiB), "").node == "n0"
