from deskhub.spawner.catalogue import Environment, Needs
from deskhub.spawner.containerspec import DataMount, SessionIdentity, build_container_spec
from deskhub.spawner.data import data_mounts_for

XFM = Environment("xfm", "XFM", "PyMca", "deskhub/xfm:latest", Needs(cpu=2, memory=4 * 1024**3))


def test_container_spec_is_exactly_what_docker_gets():
    spec = build_container_spec(
        container_name="deskhub-alice",
        identity=SessionIdentity(username="alice", server_name="", node="local"),
        env=XFM,
        home_volume="deskhub-home-alice",
        data=[DataMount("zeta", "/srv/data/zeta"), DataMount("alpha", "/srv/data/alpha")],
        environment_vars={"JUPYTERHUB_USER": "alice"},
        command=["jupyterhub-singleuser"],
        network="deskhub",
        port=8888,
        pids_limit=2048,
    )
    assert spec == {
        "create": {
            "name": "deskhub-alice",
            "image": "deskhub/xfm:latest",
            "command": ["jupyterhub-singleuser"],
            "environment": {"JUPYTERHUB_USER": "alice"},
            "labels": {
                "deskhub.managed": "true",
                "deskhub.user": "alice",
                "deskhub.server": "",
                "deskhub.environment": "xfm",
                "deskhub.node": "local",
                "deskhub.reserved.cpu": "2",
                "deskhub.reserved.memory": "4294967296",
            },
            "user": "1000:1000",
            "ports": [8888],
        },
        "host_config": {
            "mounts": [
                {
                    "Type": "volume",
                    "Source": "deskhub-home-alice",
                    "Target": "/home/deskhub",
                    "ReadOnly": False,
                },
                {
                    "Type": "bind",
                    "Source": "/srv/data/alpha",
                    "Target": "/data/alpha",
                    "ReadOnly": True,
                },
                {
                    "Type": "bind",
                    "Source": "/srv/data/zeta",
                    "Target": "/data/zeta",
                    "ReadOnly": True,
                },
            ],
            "mem_limit": 4294967296,
            "memswap_limit": 4294967296,
            "nano_cpus": 2_000_000_000,
            "pids_limit": 2048,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "network_mode": "deskhub",
            "auto_remove": False,
            "shm_size": 268435456,
        },
    }


EXPERIMENTS = {
    "mx-1": {"path": "/srv/mx-1", "users": ["alice"]},
    "xfm-7": {"path": "/srv/xfm-7", "groups": ["xfm-staff"]},
    "img-3": {"path": "/srv/img-3", "users": ["bob"], "groups": ["imaging"]},
}


def test_a_user_gets_their_experiments_only():
    assert data_mounts_for("alice", [], EXPERIMENTS) == [DataMount("mx-1", "/srv/mx-1")]
    assert data_mounts_for("carol", ["xfm-staff", "imaging"], EXPERIMENTS) == [
        DataMount("img-3", "/srv/img-3"),
        DataMount("xfm-7", "/srv/xfm-7"),
    ]
    assert data_mounts_for("mallory", ["others"], EXPERIMENTS) == []
