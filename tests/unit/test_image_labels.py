"""Environments described by image labels: every label, every broken form, the tag choice,
and the schema check, against literal ``APIClient.images()`` entries."""

import base64
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from deskhub.hub_config.site import SCHEMA, load_site
from deskhub.spawner.catalogue import Catalogue, Needs
from deskhub.spawner.containerspec import SessionIdentity, home_volume_labels, session_labels
from deskhub.spawner.image_labels import (
    LABELS,
    NAME_PATTERN,
    LabelProblems,
    best_tag,
    environment_image_entries,
    environments_from_images,
    spec_from_labels,
    split_tag,
)

GiB = 1024**3
ROOT = Path(__file__).resolve().parents[2]
SVG = "data:image/svg+xml;base64," + base64.b64encode(b"<svg xmlns='x'/>").decode()


def image(tags, image_id="sha256:1", **labels):
    return {"Id": image_id, "RepoTags": tags, "Labels": labels, "Size": 1}


def mx(tags=("deskhub/mx:latest",), image_id="sha256:mx", **extra):
    labels = {"deskhub.environment.name": "mx", "deskhub.title": "MX", **extra}
    return {"Id": image_id, "RepoTags": list(tags), "Labels": labels}


def broken(**extra):
    """The warnings of one mx image with ``extra`` labels (and nothing offered)."""
    found, warnings = environments_from_images([mx(**extra)])
    assert found == {}
    assert len(warnings) == 1
    return warnings[0]


def test_every_label_gives_the_site_yaml_shape():
    apps = [
        {"name": "DIALS", "exec": "dials.image_viewer"},
        {"name": "PyMOL", "exec": "pymol", "gpu": True},
    ]
    labels = {
        "deskhub.environment.name": "mx",
        "deskhub.title": "Macromolecular crystallography",
        "deskhub.description": "DIALS and PyMOL in a MATE desktop.",
        "deskhub.icon": SVG,
        "deskhub.needs.cpu": "2",
        "deskhub.needs.memory": "8G",
        "deskhub.needs.gpu": "exclusive:2",
        "deskhub.needs.gpu_memory": "16G",
        "deskhub.needs.node_labels": "beamline=mx, room=b2",
        "deskhub.apps": json.dumps(apps),
        "deskhub.virtualgl": "yes",
        "org.opencontainers.image.title": "ignored",
        "deskhub.image": "mx",  # the build's own label: not an environment label, ignored
    }
    found, warnings = environments_from_images([image(["deskhub/mx:latest"], **labels)])
    assert warnings == []
    assert found == {
        "mx": {
            "title": "Macromolecular crystallography",
            "description": "DIALS and PyMOL in a MATE desktop.",
            "icon": SVG,
            "image": "deskhub/mx:latest",
            "needs": {
                "cpu": 2,
                "memory": "8G",
                "gpu": {"exclusive": 2},
                "gpu_memory": "16G",
                "node_labels": {"beamline": "mx", "room": "b2"},
            },
            "apps": [{**apps[0], "gpu": False}, apps[1]],
            "virtualgl": True,
        }
    }
    env = Catalogue.from_site(found).get("mx")
    assert env.needs == Needs(
        2, 8 * GiB, "exclusive", 2, 16 * GiB, (("beamline", "mx"), ("room", "b2"))
    )
    assert [(a.name, a.gpu) for a in env.apps] == [("DIALS", False), ("PyMOL", True)]
    assert env.virtualgl is True and env.icon == SVG


def test_only_the_name_is_needed_and_empty_labels_count_as_absent():
    labels = {"deskhub.environment.name": "plain", "deskhub.title": " ", "deskhub.icon": ""}
    found, warnings = environments_from_images([image(["site/plain:3"], **labels)])
    assert (found, warnings) == ({"plain": {"image": "site/plain:3", "virtualgl": False}}, [])
    env = Catalogue.from_site(found).get("plain")
    assert (env.title, env.needs, env.apps) == ("plain", Needs(), ())


@pytest.mark.parametrize(
    ("labels", "needs"),
    [
        ({"deskhub.needs.cpu": "0.5"}, {"cpu": 0.5}),
        ({"deskhub.needs.memory": "512Mi"}, {"memory": "512Mi"}),
        ({"deskhub.needs.gpu": "none"}, {"gpu": "none"}),
        ({"deskhub.needs.gpu": "shared", "deskhub.virtualgl": "Yes"}, {"gpu": "shared"}),
        ({"deskhub.needs.gpu": "exclusive:16"}, {"gpu": {"exclusive": 16}}),
        ({"deskhub.needs.node_labels": "gpu=a40"}, {"node_labels": {"gpu": "a40"}}),
    ],
)
def test_each_need(labels, needs):
    found, warnings = environments_from_images([mx(**labels)])
    assert warnings == []
    assert found["mx"]["needs"] == needs


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (
            {"deskhub.needs.memory": "lots"},
            "label deskhub.needs.memory='lots' is not a memory size (e.g. 4G)",
        ),
        ({"deskhub.needs.memory": "0G"}, "label deskhub.needs.memory='0G' is not a memory size"),
        ({"deskhub.needs.gpu_memory": "-1G"}, "deskhub.needs.gpu_memory='-1G' is not a memory"),
        ({"deskhub.needs.cpu": "two"}, "label deskhub.needs.cpu='two' is not a number of CPUs"),
        ({"deskhub.needs.cpu": "0"}, "label deskhub.needs.cpu='0' is not a number of CPUs"),
        ({"deskhub.needs.cpu": "nan"}, "label deskhub.needs.cpu='nan' is not a number of CPUs"),
        ({"deskhub.needs.cpu": "inf"}, "label deskhub.needs.cpu='inf' is not a number of CPUs"),
        ({"deskhub.needs.gpu": "maybe"}, "label deskhub.needs.gpu='maybe' is not a GPU mode"),
        ({"deskhub.needs.gpu": "exclusive"}, "deskhub.needs.gpu='exclusive' is not a GPU mode"),
        ({"deskhub.needs.gpu": "exclusive:0"}, "deskhub.needs.gpu='exclusive:0' is not a GPU"),
        ({"deskhub.needs.gpu": "exclusive:17"}, "deskhub.needs.gpu='exclusive:17' is not a GPU"),
        ({"deskhub.needs.node_labels": "beamline"}, "is not a list of node labels k=v,k2=v2"),
        ({"deskhub.needs.node_labels": "Beam Line=mx"}, "is not a list of node labels"),
        ({"deskhub.needs.node_labels": "a=1,a=2"}, "is not a list of node labels"),
        ({"deskhub.needs.node_labels": "a=1,,b=2"}, "is not a list of node labels"),
        (
            {"deskhub.needs.cpus": "2"},
            "label deskhub.needs.cpus is not a known need (cpu, memory, gpu, gpu_memory,"
            " node_labels)",
        ),
        (
            {"deskhub.needs.gpu": "shared"},
            "label deskhub.needs.gpu='shared' asks for a GPU desktop slot, but the image has no"
            " VirtualGL (deskhub.virtualgl=yes)",
        ),
        (
            {"deskhub.virtualgl": "sometimes"},
            "label deskhub.virtualgl='sometimes' is not yes or no",
        ),
        ({"deskhub.title": "T" * 81}, "label deskhub.title is longer than 80 characters"),
        ({"deskhub.description": "D" * 301}, "label deskhub.description is longer than 300"),
        ({"deskhub.icon": "http://example.org/i.png"}, "use a data:image/... URI or an https://"),
        ({"deskhub.icon": "https://"}, "is not a usable icon"),
        ({"deskhub.icon": 'https://x.org/"onerror=1'}, "is not a usable icon"),
        ({"deskhub.icon": "javascript:alert(1)"}, "is not a usable icon"),
        ({"deskhub.icon": "data:text/html;base64,PGI+"}, "a data: URI must hold an image"),
        ({"deskhub.icon": "data:image/png;base64,!!!"}, "its base64 data is broken"),
        ({"deskhub.icon": "data:image/svg+xml,<svg onload=x>"}, "URL-encode its data"),
        ({"deskhub.icon": "data:image/png;base64," + "A" * 70000}, "longer than 64 KiB"),
        ({"deskhub.apps": "PyMca, silx"}, "label deskhub.apps is not a JSON list of"),
        ({"deskhub.apps": '{"name": "a", "exec": "a"}'}, "(not a list)"),
        ({"deskhub.apps": '[{"name": "a"}]'}, "bad entry"),
        ({"deskhub.apps": '[{"name": "", "exec": "a"}]'}, "bad entry"),
        ({"deskhub.apps": '[{"name": "a", "exec": "a", "gpu": "yes"}]'}, "bad entry"),
        ({"deskhub.apps": '[{"name": "a", "exec": "a", "icon": "x"}]'}, "bad entry"),
        ({"deskhub.apps": '["a"]'}, "bad entry"),
    ],
)
def test_a_broken_label_is_one_clear_warning_and_nothing_offered(labels, problem):
    warning = broken(**labels)
    assert warning.startswith("image deskhub/mx:latest: ")
    assert problem in warning
    assert warning.endswith("; the environment is not offered")


def test_the_example_warning_reads_as_one_sentence():
    found, warnings = environments_from_images(
        [mx(tags=["deskhub/mx:1"], **{"deskhub.needs.memory": "lots"})]
    )
    assert warnings == [
        "image deskhub/mx:1: label deskhub.needs.memory='lots' is not a memory size (e.g. 4G);"
        " the environment is not offered"
    ]


def test_every_problem_of_an_image_is_named_once():
    warning = broken(**{"deskhub.needs.cpu": "x", "deskhub.needs.memory": "y"})
    assert "deskhub.needs.cpu='x'" in warning and "deskhub.needs.memory='y'" in warning


def test_long_values_are_shortened_in_warnings():
    warning = broken(**{"deskhub.icon": "ftp://" + "x" * 500})
    assert "x" * 100 not in warning and "…" in warning


@pytest.mark.parametrize("name", ["MX", "-mx", "m x", "a" * 64, "mx/1"])
def test_a_bad_name_is_a_warning(name):
    found, warnings = environments_from_images(
        [image(["a/b:1"], **{"deskhub.environment.name": name})]
    )
    assert found == {}
    assert warnings[0].startswith(f"image a/b:1: label deskhub.environment.name={name[:30]!r}"[:-1])
    assert "is not an allowed name" in warnings[0]


def test_images_without_a_name_or_a_tag_are_not_environments():
    images = [
        image(["deskhub/base:latest"], **{"deskhub.image": "base"}),
        image(["deskhub/child:latest"], **{"deskhub.environment.name": "", "deskhub.title": "T"}),
        image(None, **{"deskhub.environment.name": "dangling"}),
        image(["<none>:<none>"], **{"deskhub.environment.name": "dangling"}),
        {"Id": "x", "RepoTags": ["a/b:1"], "Labels": None},
    ]
    assert environments_from_images(images) == ({}, [])
    assert environment_image_entries(images) == ()


def test_snapshot_entries_keep_only_the_deskhub_labels():
    entry = image(["deskhub/mx:latest"], **{"deskhub.environment.name": "mx", "maintainer": "x"})
    assert environment_image_entries([entry]) == (
        {
            "Id": "sha256:1",
            "RepoTags": ["deskhub/mx:latest"],
            "Labels": {"deskhub.environment.name": "mx"},
        },
    )


# -- tag choice -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tags", "best"),
    [
        (["deskhub/mx:1", "deskhub/mx:latest", "deskhub/mx:2"], "deskhub/mx:latest"),
        (["deskhub/mx:1.9", "deskhub/mx:1.10", "deskhub/mx:1.2"], "deskhub/mx:1.10"),
        (["b/mx:latest", "a/mx:latest"], "a/mx:latest"),
        (["b/mx:2", "a/mx:1"], "b/mx:2"),
        (["registry:5000/mx", "registry:5000/mx:1"], "registry:5000/mx"),
    ],
)
def test_best_tag(tags, best):
    assert best_tag(tags) == best
    assert best_tag(reversed(tags)) == best


def test_split_tag_knows_registry_ports():
    assert split_tag("registry:5000/deskhub/mx:1.2") == ("registry:5000/deskhub/mx", "1.2")
    assert split_tag("registry:5000/deskhub/mx") == ("registry:5000/deskhub/mx", "latest")


def test_several_tags_of_one_environment_run_latest_else_the_highest():
    older = mx(tags=["deskhub/mx:1.9"], image_id="sha256:a", **{"deskhub.title": "Old"})
    newer = mx(tags=["deskhub/mx:1.10", "deskhub/mx:latest"], image_id="sha256:b")
    found, warnings = environments_from_images([older, newer])
    assert (found["mx"]["image"], found["mx"]["title"], warnings) == ("deskhub/mx:latest", "MX", [])
    newer["RepoTags"] = ["deskhub/mx:1.10"]
    found, _ = environments_from_images([newer, older])
    assert found["mx"]["image"] == "deskhub/mx:1.10"


def test_a_broken_newest_image_falls_back_to_the_best_good_one():
    good = mx(tags=["deskhub/mx:1"], image_id="sha256:a")
    bad = mx(tags=["deskhub/mx:latest"], image_id="sha256:b", **{"deskhub.needs.cpu": "-1"})
    found, warnings = environments_from_images([bad, good])
    assert found["mx"]["image"] == "deskhub/mx:1"
    assert warnings == [
        "image deskhub/mx:latest: label deskhub.needs.cpu='-1' is not a number of CPUs above 0"
        " (e.g. 2 or 0.5); environment 'mx' runs deskhub/mx:1 instead"
    ]


def test_an_inherited_name_on_another_repository_is_a_warning():
    parent = image(["deskhub/xfm:latest"], "sha256:p", **{"deskhub.environment.name": "xfm"})
    child = image(["deskhub/custom:latest"], "sha256:c", **{"deskhub.environment.name": "xfm"})
    found, warnings = environments_from_images([parent, child])
    assert found["xfm"]["image"] == "deskhub/custom:latest"  # sorts first: deterministic
    assert warnings == [
        "environment 'xfm' is labelled on images of several repositories"
        " (deskhub/custom:latest, deskhub/xfm:latest); it runs deskhub/custom:latest. An image"
        " built FROM another inherits its labels: give it its own deskhub.environment.name"
        ' (or "" for none)'
    ]


def test_one_image_under_two_names_or_on_two_nodes_is_no_ambiguity():
    one = mx(tags=["deskhub/mx:latest", "registry.example.org/deskhub/mx:latest"])
    old = mx(tags=["deskhub/mx:1"], image_id="sha256:old")
    found, warnings = environments_from_images([one, old, dict(one)])
    assert (found["mx"]["image"], warnings) == ("deskhub/mx:latest", [])


def test_a_tag_is_read_from_its_first_node():
    node_a = mx(image_id="sha256:a", **{"deskhub.title": "On a"})
    node_b = mx(image_id="sha256:b", **{"deskhub.title": "On b"})
    assert environments_from_images([node_a, node_b])[0]["mx"]["title"] == "On a"
    assert environments_from_images([node_b, node_a])[0]["mx"]["title"] == "On b"


def test_environments_come_sorted_by_name():
    images = [
        image(["z/z:latest"], "sha256:z", **{"deskhub.environment.name": "zeta"}),
        image(["a/a:latest"], "sha256:a", **{"deskhub.environment.name": "alpha"}),
    ]
    assert list(environments_from_images(images)[0]) == ["alpha", "zeta"]


# -- the schema ---------------------------------------------------------------------------
def test_specs_are_checked_against_the_site_schema_of_one_environment():
    schema = yaml.safe_load(SCHEMA.read_text())
    defs = schema["$defs"]
    assert NAME_PATTERN.pattern == defs["name"]["pattern"]
    with pytest.raises(LabelProblems) as err:
        spec_from_labels({"deskhub.title": "T"}, image="")  # the schema wants an image
    assert err.value.problems == [
        "the site schema refuses what they give: 'image' '' should be non-empty"
    ]


def test_labels_never_collide_with_the_spawners_container_labels():
    from deskhub.spawner.catalogue import Environment

    env = Environment("mx", "MX", "", "deskhub/mx:latest", Needs(gpu="shared"))
    container = set(session_labels(SessionIdentity("u", "", "n"), env, ("GPU-0",)))
    container |= set(home_volume_labels("u"))
    assert container == {
        "deskhub.managed",
        "deskhub.user",
        "deskhub.server",
        "deskhub.environment",
        "deskhub.node",
        "deskhub.reserved.cpu",
        "deskhub.reserved.memory",
        "deskhub.gpu",
        "deskhub.gpus",
        "deskhub.home-of",
        "deskhub.home-owner",
    }
    assert not container & LABELS


# -- the images this repository builds describe the default environments ---------------------
def dockerfile_labels(name: str) -> dict[str, str]:
    """The LABELs of images/NAME/Dockerfile (continuation lines joined, shell-quoted), with
    ``${ARG}`` replaced by the ARG's default."""
    lines = (ROOT / "images" / name / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    labels, args = {}, {}
    for line in lines:
        if line.startswith("ARG ") and "=" in line:
            key, _, value = line[len("ARG ") :].strip().partition("=")
            args[key] = value
        if line.startswith("LABEL "):
            for word in shlex.split(line[len("LABEL ") :]):
                key, _, value = word.partition("=")
                labels[key] = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)
    return labels


@pytest.mark.parametrize(("name", "parent"), [("base", None), ("xfm", "base")])
def test_the_images_labels_match_the_default_environments(name, parent):
    labels = {**(dockerfile_labels(parent) if parent else {}), **dockerfile_labels(name)}
    env_name = labels["deskhub.environment.name"]
    spec = spec_from_labels(labels, f"deskhub/{name}:latest")
    default = load_site(None)["environments"][env_name]
    assert {k: spec[k] for k in default if k != "default"} == {
        k: v for k, v in default.items() if k != "default"
    }
    assert spec["virtualgl"] is False and spec["icon"].startswith("data:image/svg+xml;base64,")
    assert spec["apps"]


@pytest.mark.parametrize(
    ("name", "gpu_apps"), [("base", []), ("xfm", []), ("mx", ["PyMOL"]), ("imaging", ["ParaView"])]
)
def test_every_image_describes_its_environment(name, gpu_apps):
    """Each image built FROM base sets its own name, title, icon and apps; GL applications
    are marked for VirtualGL; without VirtualGL (the default build) none asks for a GPU."""
    own = dockerfile_labels(name)
    labels = {**(dockerfile_labels("base") if name != "base" else {}), **own}
    spec = spec_from_labels(labels, f"deskhub/{name}:latest")
    assert labels["deskhub.image"] == name
    if name != "base":
        assert {"deskhub.environment.name", "deskhub.title", "deskhub.icon", "deskhub.apps"} <= set(
            own
        )
    assert spec["icon"].startswith("data:image/svg+xml;base64,")
    assert [app["name"] for app in spec["apps"] if app["gpu"]] == gpu_apps
    assert (
        labels["deskhub.virtualgl"] == "no" and spec.get("needs", {}).get("gpu", "none") == "none"
    )
