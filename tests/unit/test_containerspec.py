import json

from deskhub.spawner.catalogue import App, Catalogue, Environment, Needs
from deskhub.spawner.containerspec import (
    DataMount,
    SessionIdentity,
    apps_environment,
    build_container_spec,
)
from deskhub.spawner.data import data_mounts_for
from deskhub.spawner.image_labels import spec_from_labels

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
            "environment": {
                "HOME": "/home/deskhub",
                "USER": "alice",
                "LOGNAME": "alice",
                "JUPYTERHUB_USER": "alice",
            },
            "labels": {
                "deskhub.managed": "true",
                "deskhub.user": "alice",
                "deskhub.server": "",
                "deskhub.environment": "xfm",
                "deskhub.node": "local",
                "deskhub.reserved.cpu": "2",
                "deskhub.reserved.memory": "4294967296",
                "deskhub.gpu": "none",
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


VIZ = Environment(
    "viz", "3D viz", "", "deskhub/viz:1", Needs(cpu=1, memory=2 * 1024**3, gpu="shared")
)
TRAIN = Environment(
    "train",
    "Training",
    "",
    "deskhub/train:1",
    Needs(cpu=4, memory=8 * 1024**3, gpu="exclusive", gpus=2),
)


def gpu_spec(env, gpus, publish_address=""):
    return build_container_spec(
        container_name="deskhub-bob",
        identity=SessionIdentity(username="bob", server_name="", node="gpu-1"),
        env=env,
        home_volume="deskhub-home-bob",
        data=[],
        environment_vars={"JUPYTERHUB_USER": "bob"},
        command=["jupyterhub-singleuser"],
        network="deskhub",
        port=8888,
        pids_limit=2048,
        gpus=gpus,
        publish_address=publish_address,
    )


def test_a_shared_gpu_desktop_on_a_remote_node_gets_its_gpu_and_a_published_port():
    spec = gpu_spec(VIZ, ("GPU-aaaa",), publish_address="10.0.0.5")
    assert spec["create"]["environment"] == {
        "HOME": "/home/deskhub",
        "USER": "bob",
        "LOGNAME": "bob",
        "JUPYTERHUB_USER": "bob",
        "DESKHUB_GPU": "shared",
        "DESKHUB_GPUS": "GPU-aaaa",
        "VGL_DISPLAY": "egl",
    }
    assert spec["create"]["labels"]["deskhub.gpu"] == "shared"
    assert spec["create"]["labels"]["deskhub.gpus"] == "GPU-aaaa"
    assert spec["host_config"]["device_requests"] == [
        {
            "Driver": "nvidia",
            "DeviceIDs": ["GPU-aaaa"],
            "Capabilities": [["gpu", "graphics", "utility"]],
        }
    ]
    assert spec["host_config"]["port_bindings"] == {8888: ("10.0.0.5",)}


def test_an_exclusive_session_gets_exactly_its_gpus_for_compute():
    spec = gpu_spec(TRAIN, ("GPU-bbbb", "GPU-cccc"))
    assert spec["host_config"]["device_requests"] == [
        {
            "Driver": "nvidia",
            "DeviceIDs": ["GPU-bbbb", "GPU-cccc"],
            "Capabilities": [["gpu", "compute", "graphics", "utility"]],
        }
    ]
    assert spec["create"]["labels"]["deskhub.gpus"] == "GPU-bbbb,GPU-cccc"
    assert spec["create"]["environment"]["DESKHUB_GPU"] == "exclusive"
    assert "port_bindings" not in spec["host_config"]


def test_a_cpu_session_asks_for_no_device():
    spec = gpu_spec(XFM, ())
    assert "device_requests" not in spec["host_config"]
    assert "deskhub.gpus" not in spec["create"]["labels"]
    assert spec["create"]["environment"] == {
        "HOME": "/home/deskhub",
        "USER": "bob",
        "LOGNAME": "bob",
        "JUPYTERHUB_USER": "bob",
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


def test_apps_environment_is_the_catalogues_apps_as_json():
    apps = (
        App("PyMOL", "pymol", gpu=True),
        App('Odd "name" $(x)', "sh -c 'echo 100%'"),
    )
    env = apps_environment(apps)
    assert env == {
        "DESKHUB_APPS": '[{"name":"PyMOL","exec":"pymol","gpu":true},'
        '{"name":"Odd \\"name\\" $(x)","exec":"sh -c \'echo 100%\'","gpu":false}]'
    }
    assert json.loads(env["DESKHUB_APPS"])[1] == {
        "name": 'Odd "name" $(x)',
        "exec": "sh -c 'echo 100%'",
        "gpu": False,
    }
    # no apps: the value says so, and the desktop removes launchers of another environment
    assert apps_environment(()) == {"DESKHUB_APPS": "[]"}


def test_apps_from_image_labels_reach_the_environment_variable():
    spec = spec_from_labels(
        {
            "deskhub.environment.name": "mx",
            "deskhub.apps": '[{"name": "DIALS", "exec": "dials-terminal"},'
            ' {"name": "PyMOL", "exec": "pymol", "gpu": true}]',
        },
        "deskhub/mx:latest",
    )
    env = Catalogue.from_site({"mx": spec}).get("mx")
    assert env is not None
    assert json.loads(apps_environment(env.apps)["DESKHUB_APPS"]) == [
        {"name": "DIALS", "exec": "dials-terminal", "gpu": False},
        {"name": "PyMOL", "exec": "pymol", "gpu": True},
    ]
