"""Workshops as plain data: join codes, names, the time window, what a participant may
start, and workshops.json across a restart."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deskhub.spawner.catalogue import Catalogue
from deskhub.spawner.options import choose_environment
from deskhub.workshops.images import ImagesReport, pull_plan
from deskhub.workshops.lifecycle import instructor_role
from deskhub.workshops.model import (
    CODE_ALPHABET,
    Workshop,
    WorkshopError,
    new_code,
    normalize_code,
    normalize_participant_name,
    parse_time,
    participant_username,
    patched,
    workshop_from_request,
)
from deskhub.workshops.narrowing import narrow
from deskhub.workshops.store import WorkshopStore, read_workshops

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
CATALOGUE = Catalogue.from_site(
    {
        "desktop": {
            "image": "deskhub/base:latest",
            "default": True,
            "needs": {"cpu": 1, "memory": "2G"},
        },
        "xfm": {"image": "deskhub/xfm:latest", "needs": {"cpu": 2, "memory": "4G"}},
        "viz": {
            "image": "deskhub/imaging:latest",
            "needs": {"cpu": 0.5, "memory": "1G", "gpu": "shared"},
        },
        "mx": {
            "image": "deskhub/mx:latest",
            "needs": {"cpu": 1, "node_labels": {"beamline": "mx"}},
        },
    }
)


def request(**changes):
    body = {
        "name": "intro-xrf",
        "size": 20,
        "start": "2026-11-26T09:30:00Z",
        "end": "2026-11-26T12:00:00+01:00",
        "environments": ["xfm", "desktop"],
        "cpu": 0.5,
        "memory": "1G",
        "instructors": ["ivy"],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def create(**changes) -> Workshop:
    return workshop_from_request(
        request(**changes),
        now=NOW,
        environments=CATALOGUE.names(),
        is_user={"ivy", "admin"}.__contains__,
    )


# -- codes ---------------------------------------------------------------------------
def test_codes_use_an_unambiguous_alphabet():
    assert not set("01OIL") & set(CODE_ALPHABET)
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == 8 and set(c) <= set(CODE_ALPHABET) for c in codes)


def test_a_new_code_is_never_a_taken_one():
    taken = {new_code(length=1) for _ in range(500)} - {"Z"}
    assert new_code(taken, length=1) == "Z"


def test_codes_are_read_as_typed_by_people():
    assert normalize_code(" abcd-efgh ") == "ABCDEFGH"
    assert normalize_code("ab cd ef gh") == "ABCDEFGH"


# -- names ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "typed,name", [("Alice", "alice"), (" jo-smith ", "jo-smith"), ("b2", "b2"), ("x", "x")]
)
def test_good_names(typed, name):
    assert normalize_participant_name(typed) == name


@pytest.mark.parametrize(
    "typed", ["", "2pac", "-a", "a-", "al ice", "a/b", "a.b", "ünï", "a" * 21, "../etc", "a_b"]
)
def test_bad_names_get_one_sentence(typed):
    with pytest.raises(WorkshopError) as err:
        normalize_participant_name(typed)
    assert str(err.value).count(".") <= 2 and str(err.value).endswith(".")


@given(st.text(max_size=30))
def test_any_accepted_name_makes_a_valid_username(typed):
    try:
        name = normalize_participant_name(typed)
    except WorkshopError:
        return
    username = participant_username("intro", name)
    assert username == username.lower() and "/" not in username and " " not in username
    assert len(username) <= 51


# -- creation -------------------------------------------------------------------------
def test_a_workshop_from_an_admin_request():
    workshop = create()
    assert workshop.environments == ("xfm", "desktop")
    assert workshop.end == datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert workshop.cpu == 0.5 and workshop.memory == 1024**3
    assert workshop.instructors == ("ivy",)
    assert workshop.group == "workshop-intro-xrf"
    assert workshop.role == "workshop-intro-xrf-instructors"


@pytest.mark.parametrize(
    "changes,sentence",
    [
        ({"name": "Intro"}, "workshop name must be"),
        ({"name": "a"}, "workshop name must be"),
        ({"size": 0}, "size must be a whole number from 1 to 100"),
        ({"size": 101}, "from 1 to 100"),
        ({"size": True}, "size must be"),
        ({"start": "tomorrow"}, "is not a date and time"),
        ({"start": "2026-11-26T09:30:00"}, "with its time zone"),
        ({"end": "2026-11-26T09:00:00Z"}, "end must come after the start"),
        ({"start": "2026-11-26T07:00:00Z", "end": "2026-11-26T08:00:00Z"}, "already past"),
        ({"environments": []}, "at least one environment"),
        ({"environments": ["nope"]}, "no environment named 'nope'"),
        ({"instructors": ["mallory"]}, "no hub user named 'mallory'"),
        ({"cpu": -1}, "CPU cap"),
        ({"memory": "lots"}, "memory cap"),
        ({"colour": "red"}, "'colour' is not a workshop setting"),
        ({"size": None}, "needs size"),
    ],
)
def test_bad_requests_get_one_sentence(changes, sentence):
    with pytest.raises(WorkshopError, match=sentence) as err:
        create(**changes)
    assert "\n" not in str(err.value)


def test_changing_the_end_and_the_size():
    workshop = create().with_participant("a").with_participant("b")
    later = patched(workshop, {"end": "2026-11-26T13:00:00Z", "size": 2})
    assert later.end == datetime(2026, 11, 26, 13, 0, tzinfo=UTC) and later.size == 2
    with pytest.raises(WorkshopError, match="cannot be smaller"):
        patched(workshop, {"size": 1})
    with pytest.raises(WorkshopError, match="after the start"):
        patched(workshop, {"end": "2026-11-26T09:00:00Z"})
    with pytest.raises(WorkshopError, match="Send"):
        patched(workshop, {"name": "other"})


# -- the time window --------------------------------------------------------------------
def test_joining_before_during_and_after():
    workshop = replace(create(), size=2)
    assert workshop.join_refusal("ann", NOW) == (
        "This workshop starts at 2026-11-26 09:30 UTC; join then."
    )
    during = NOW + timedelta(minutes=45)
    assert workshop.state(during) == "running"
    assert workshop.join_refusal("ann", during) is None
    full = workshop.with_participant("ann")
    assert "already taken" in full.join_refusal("ann", during)
    assert full.with_participant("bob").join_refusal("cy", during) == "This workshop is full."
    after = workshop.end
    assert workshop.state(after) == "ended"
    assert workshop.join_refusal("ann", after) == "This workshop has ended."


# -- what participants may start ------------------------------------------------------------
def test_narrowing_keeps_the_workshops_environments_with_capped_needs():
    narrowed = narrow(CATALOGUE, create(environments=["xfm", "desktop", "viz"]))
    assert narrowed.names() == ["xfm", "desktop", "viz"]
    xfm, desktop, viz = narrowed
    assert (xfm.needs.cpu, xfm.needs.memory) == (0.5, 1024**3)
    assert (desktop.needs.cpu, desktop.needs.memory) == (0.5, 1024**3)
    # a need below the cap stays; the GPU is kept
    assert (viz.needs.cpu, viz.needs.memory, viz.needs.gpu, viz.needs.gpus) == (
        0.5,
        1024**3,
        "shared",
        1,
    )
    # the workshop's first environment is what a spawn without options gets
    assert narrowed.default.name == "xfm"
    assert choose_environment({}, narrowed).name == "xfm"
    assert CATALOGUE.get("xfm").needs.cpu == 2  # the full catalogue is untouched


def test_narrowing_without_caps_and_with_a_missing_environment():
    workshop = create(cpu=None, memory=None, environments=["desktop"])
    narrowed = narrow(CATALOGUE, workshop)
    assert narrowed.names() == ["desktop"]
    assert narrowed.get("desktop").needs == CATALOGUE.get("desktop").needs
    assert len(narrow(Catalogue([]), workshop)) == 0


def test_the_instructor_role_reaches_only_the_workshops_group():
    role = instructor_role(create())
    assert role["name"] == "workshop-intro-xrf-instructors"
    assert role["users"] == ["ivy"]
    for scope in role["scopes"]:
        assert scope == "admin-ui" or scope.endswith("!group=workshop-intro-xrf")
    assert "access:servers!group=workshop-intro-xrf" in role["scopes"]


# -- images ---------------------------------------------------------------------------
def test_pull_plan_takes_the_nodes_each_environment_may_use():
    nodes = [
        {"name": "plain", "endpoint": "unix:///var/run/docker.sock"},
        {"name": "mx", "endpoint": "tcp://10.0.0.2:2376", "labels": {"beamline": "mx"}},
        {"name": "gpu", "endpoint": "tcp://10.0.0.3:2376", "gpus": [{"id": "GPU-0"}]},
    ]
    plan = pull_plan(nodes, narrow(CATALOGUE, create(environments=["desktop", "mx", "viz"])))
    assert [(n.name, images) for n, images in plan] == [
        ("plain", ["deskhub/base:latest"]),
        ("mx", ["deskhub/base:latest", "deskhub/mx:latest"]),
        ("gpu", ["deskhub/base:latest", "deskhub/imaging:latest"]),
    ]


def test_images_report_sentence():
    assert ImagesReport().describe() == "images not checked since the hub started"
    report = ImagesReport(nodes=["a", "b"], ready=["a"], failed={"b": "its engine does not answer"})
    assert report.describe() == "images ready on 1 of 2 nodes; b: its engine does not answer"


# -- workshops.json --------------------------------------------------------------------
def test_workshops_json_round_trip(tmp_path):
    path = tmp_path / "workshops.json"
    store = WorkshopStore(path)
    assert store.all() == []
    workshop = create().with_participant("ann").with_participant("bob")
    store.put(workshop)
    store.put(create(name="second", environments=["desktop"]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["version"] == 1
    again = WorkshopStore(path)  # a hub restart
    assert again.get("intro-xrf") == workshop
    assert [w.name for w in again.all()] == ["intro-xrf", "second"]
    assert again.by_code(workshop.code) == workshop
    assert again.of_user("intro-xrf-bob") == workshop
    assert again.of_user("intro-xrf-zed") is None and again.of_user("bob") is None
    again.remove("second")
    assert list(read_workshops(path)) == ["intro-xrf"]
    assert [p.name for p in tmp_path.iterdir()] == ["workshops.json"]  # no temporary left


def test_times_are_kept_in_utc():
    assert parse_time("2026-11-26T10:00:00+01:00", "start") == NOW
    assert Workshop.from_json(create().to_json()).start.tzinfo == UTC


def test_the_images_are_pulled_again_before_the_start_once():
    workshop = create()  # starts at 09:30, NOW is 09:00
    assert not workshop.prepull_due(NOW, before=600)
    assert workshop.prepull_due(NOW, before=3600)
    assert workshop.prepull_due(NOW + timedelta(minutes=25), before=600)
    assert not replace(workshop, prepulled_before_start=True).prepull_due(NOW, before=3600)
    assert not workshop.prepull_due(workshop.end, before=3600)
