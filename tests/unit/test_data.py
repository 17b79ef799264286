"""Experiment data from the login, and the uid a session runs as: plain data in and out."""

from __future__ import annotations

import logging

import pytest

from deskhub.spawner.catalogue import Environment, Needs
from deskhub.spawner.containerspec import (
    DataMount,
    SessionIdentity,
    build_container_spec,
    build_mounts,
    home_owner_spec,
)
from deskhub.spawner.data import Layout, login_mounts, merge_mounts, session_ids

LAYOUT = Layout(root="/srv/data", processed_root="/srv/processed")


def test_each_experiment_of_the_login_is_mounted_read_only_with_its_processed_area():
    mounts = login_mounts(["mx-2026-042", "xfm-7"], LAYOUT)
    assert build_mounts("home-alice", mounts) == [
        {"Type": "volume", "Source": "home-alice", "Target": "/home/deskhub", "ReadOnly": False},
        {
            "Type": "bind",
            "Source": "/srv/data/mx-2026-042",
            "Target": "/data/mx-2026-042",
            "ReadOnly": True,
        },
        {"Type": "bind", "Source": "/srv/data/xfm-7", "Target": "/data/xfm-7", "ReadOnly": True},
        {
            "Type": "bind",
            "Source": "/srv/processed/mx-2026-042",
            "Target": "/processed/mx-2026-042",
            "ReadOnly": False,
        },
        {
            "Type": "bind",
            "Source": "/srv/processed/xfm-7",
            "Target": "/processed/xfm-7",
            "ReadOnly": False,
        },
    ]


@pytest.mark.parametrize(
    "crafted",
    [
        "..",
        "../etc",
        "a\n",
        "a/../../b",
        "a/b",
        "/etc",
        ".hidden",
        "-rf",
        "a\x00b",
        "",
        "a" * 65,
        7,
        None,
    ],
)
def test_a_crafted_experiment_id_is_refused_and_logged(crafted, caplog):
    caplog.set_level(logging.WARNING)
    assert login_mounts([crafted, "ok-1"], LAYOUT, exists=lambda p: True) == [
        DataMount("ok-1", "/srv/data/ok-1"),
        DataMount("ok-1", "/srv/processed/ok-1", processed=True),
    ]
    assert "is not allowed" in caplog.text


def test_a_missing_folder_is_left_out_and_logged(caplog):
    caplog.set_level(logging.WARNING)
    present = {"/srv/data/a", "/srv/data/b", "/srv/processed/b"}
    assert login_mounts(["a", "b", "gone"], LAYOUT, exists=present.__contains__) == [
        DataMount("a", "/srv/data/a"),
        DataMount("b", "/srv/data/b"),
        DataMount("b", "/srv/processed/b", processed=True),
    ]
    assert "experiment gone has no data folder /srv/data/gone" in caplog.text


def test_without_a_data_root_the_login_mounts_nothing():
    assert login_mounts(["a"], Layout()) == []


def test_the_site_yaml_and_the_login_naming_one_experiment_mount_it_once():
    site = [DataMount("a", "/site/a")]
    assert merge_mounts(site, login_mounts(["a", "b"], Layout(root="/srv"))) == [
        DataMount("a", "/site/a"),
        DataMount("b", "/srv/b"),
    ]


@pytest.mark.parametrize(
    ("auth_state", "expected"),
    [
        (None, (1000, 1000)),
        ({}, (1000, 1000)),
        ({"uid": 20001, "gid": 30001}, (20001, 30001)),
        ({"uid": "20001", "gid": ["30001"]}, (20001, 30001)),
        ({"uid": 20001}, (20001, 20001)),  # a user-private group
        ({"uid": 0, "gid": 0}, (1000, 1000)),  # never root, never a system account
        ({"uid": 999, "gid": 20}, (1000, 1000)),
        ({"uid": "x"}, (1000, 1000)),
    ],
)
def test_the_session_runs_as_the_directorys_uid_never_root(auth_state, expected):
    assert session_ids(auth_state, 1000, 1000) == expected


def test_the_processed_areas_group_is_a_supplementary_group_of_the_session():
    env = Environment("desktop", "D", "", "deskhub/base:latest", Needs(cpu=1, memory=2**30))
    spec = build_container_spec(
        container_name="deskhub-alice",
        identity=SessionIdentity("alice", "", "local", uid=20001, gid=20001, groups=(40042,)),
        env=env,
        home_volume="deskhub-home-alice",
        data=[],
        environment_vars={},
        command=["jupyterhub-singleuser"],
        network="deskhub",
        port=8888,
        pids_limit=2048,
    )
    assert spec["create"]["user"] == "20001:20001"
    assert spec["host_config"]["group_add"] == ["40042"]


def test_a_home_is_given_to_the_users_uid_by_a_one_shot_container():
    assert home_owner_spec("deskhub/base:latest", "deskhub-home-alice", 20001, 20001) == {
        "create": {
            "image": "deskhub/base:latest",
            "command": ["chown", "-R", "20001:20001", "/home/deskhub"],
            "user": "0:0",
            "labels": {"deskhub.helper": "home-owner"},
            "network_disabled": True,
        },
        "host_config": {
            "mounts": [
                {"Type": "volume", "Source": "deskhub-home-alice", "Target": "/home/deskhub"}
            ],
            "cap_drop": ["ALL"],
            "cap_add": ["CHOWN", "DAC_READ_SEARCH", "FOWNER"],
            "security_opt": ["no-new-privileges"],
            "network_mode": "none",
            "mem_limit": 256 * 1024**2,
            "pids_limit": 64,
        },
    }
