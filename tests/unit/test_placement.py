import pytest
from hypothesis import given
from hypothesis import strategies as st

from deskhub.spawner.catalogue import Needs
from deskhub.spawner.nodes import sessions_from_containers
from deskhub.spawner.placement import NodeSnapshot, NoPlacement, Reservation, place

GiB = 1024**3


def node(name, cpus=8, memory=32 * GiB, sessions=(), reachable=True, images=()):
    return NodeSnapshot(
        name=name,
        reachable=reachable,
        cpus=cpus,
        memory=memory,
        sessions={f"u{i}/": r for i, r in enumerate(sessions)},
        images=frozenset(images),
    )


def test_least_loaded_node_wins_and_reason_says_why():
    busy = node("a", sessions=[Reservation(4, 8 * GiB)])
    idle = node("b", images=["deskhub/base:latest"])
    placement = place(Needs(1, 2 * GiB), [busy, idle], image="deskhub/base:latest")
    assert placement.node == "b"
    assert placement.reason == (
        "b: 8 CPUs and 32 GiB free, 0 session(s) running, image already there"
    )


def test_ties_are_broken_by_name():
    assert place(Needs(), [node("c"), node("a"), node("b")]).node == "a"


def test_unreachable_and_full_nodes_are_skipped():
    nodes = [
        node("down", reachable=False),
        node("full", cpus=2, sessions=[Reservation(2, GiB)]),
        node("ok", cpus=2),
    ]
    assert place(Needs(1, GiB), nodes).node == "ok"


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([node("a", reachable=False)], "no compute node is answering right now"),
        ([node("a", cpus=1)], "not enough free CPUs"),
        ([node("a", memory=GiB)], "not enough free memory"),
        ([], "No compute node is configured"),
    ],
)
def test_nothing_fits_says_why(nodes, message):
    with pytest.raises(NoPlacement, match=message):
        place(Needs(2, 4 * GiB), nodes)


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
            },
        },
        {"Id": "2", "Labels": {"com.example": "x"}},
        {"Id": "3", "Labels": {"deskhub.managed": "true", "deskhub.reserved.cpu": "lots"}},
    ]
    assert sessions_from_containers(containers) == {"alice/": Reservation(2.0, 4 * GiB)}


@given(
    st.lists(st.tuples(st.integers(1, 16), st.integers(1, 64)), min_size=1, max_size=6),
    st.lists(st.tuples(st.sampled_from([0.5, 1, 2, 4]), st.integers(1, 16)), max_size=60),
)
def test_capacity_is_never_exceeded(node_sizes, requests):
    nodes = {f"n{i}": node(f"n{i}", cpus=c, memory=m * GiB) for i, (c, m) in enumerate(node_sizes)}
    for i, (cpu, mem) in enumerate(requests):
        needs = Needs(cpu, mem * GiB)
        try:
            chosen = place(needs, nodes.values()).node
        except NoPlacement:
            assert not any(
                n.cpus - n.reserved_cpu >= cpu and n.memory - n.reserved_memory >= mem * GiB
                for n in nodes.values()
            )
            continue
        old = nodes[chosen]
        sessions = {**old.sessions, f"s{i}/": Reservation(cpu, mem * GiB)}
        nodes[chosen] = NodeSnapshot(chosen, True, old.cpus, old.memory, sessions)
        assert nodes[chosen].reserved_cpu <= nodes[chosen].cpus
        assert nodes[chosen].reserved_memory <= nodes[chosen].memory
