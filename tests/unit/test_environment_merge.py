"""The catalogue = environments found in images, laid under the site YAML's; and what the
node pool makes of its nodes' images (reachable nodes only, warnings logged once)."""

import logging

from deskhub.spawner.catalogue import App, Catalogue, merge_environments
from deskhub.spawner.form import render_options_form
from deskhub.spawner.inventory import NodeConfig
from deskhub.spawner.nodes import Node, NodePool
from deskhub.spawner.placement import NodeSnapshot

MX_IMAGE = {
    "title": "MX",
    "description": "From labels",
    "icon": "https://icons.example.org/mx.svg",
    "image": "deskhub/mx:latest",
    "needs": {"cpu": 2, "memory": "8G", "node_labels": {"beamline": "mx"}},
    "apps": [{"name": "PyMOL", "exec": "pymol", "gpu": True}],
    "virtualgl": True,
}


def test_site_entries_override_image_entries_key_by_key():
    site = {"mx": {"title": "MX at our site", "needs": {"memory": "16G"}, "default": True}}
    merged = merge_environments(site, {"mx": MX_IMAGE})
    assert merged.environments == {
        "mx": {
            **MX_IMAGE,
            "title": "MX at our site",
            "needs": {"cpu": 2, "memory": "16G", "node_labels": {"beamline": "mx"}},
            "default": True,
        }
    }
    assert merged.sources == {"mx": "image+site"}
    assert merged.warnings == []
    assert MX_IMAGE["needs"]["memory"] == "8G"  # the image's spec is not changed


def test_site_gpu_mode_replaces_the_images():
    labelled = {**MX_IMAGE, "needs": {"gpu": {"exclusive": 2}}}
    merged = merge_environments({"mx": {"needs": {"gpu": "none"}}}, {"mx": labelled})
    assert merged.environments["mx"]["needs"] == {"gpu": "none"}
    merged = merge_environments({"mx": {"needs": {"gpu": {"exclusive": 1}}}}, {"mx": labelled})
    assert merged.environments["mx"]["needs"] == {"gpu": {"exclusive": 1}}


def test_hidden_hides_and_site_only_entries_still_count():
    site = {
        "desktop": {"title": "Desk", "image": "deskhub/base:latest", "default": True},
        "mx": {"hidden": True},
        "ghost": {"image": "deskhub/never-built:latest"},
    }
    images = {"mx": MX_IMAGE, "xfm": {"image": "deskhub/xfm:latest", "virtualgl": False}}
    merged = merge_environments(site, images)
    assert merged.sources == {
        "desktop": "site",
        "mx": "image+site",
        "ghost": "site",
        "xfm": "image",
    }
    assert merged.environments["mx"]["hidden"] is True
    catalogue = Catalogue.from_site(merged.environments)
    assert catalogue.names() == ["desktop", "ghost", "xfm"]  # site order, then by name
    assert catalogue.default.name == "desktop"


def test_a_site_entry_without_an_image_anywhere_is_a_warning():
    merged = merge_environments({"mx": {"title": "MX"}, "old": {"hidden": True}}, {})
    assert merged.environments == {}
    assert merged.warnings == [
        "environment 'mx' in the site config has no image, and no image on a reachable node"
        " is labelled deskhub.environment.name=mx; it is not offered"
    ]


def test_no_gpu_desktop_slot_for_an_image_without_virtualgl():
    labelled = {"image": "deskhub/base:latest", "virtualgl": False}
    merged = merge_environments({"desktop": {"needs": {"gpu": "shared"}}}, {"desktop": labelled})
    assert merged.environments == {}
    assert merged.warnings == [
        "environment 'desktop' needs a shared GPU, but its image deskhub/base:latest has no"
        " VirtualGL (label deskhub.virtualgl=yes); it is not offered"
    ]
    # a site entry that does not say (virtualgl absent) keeps working as before
    site = {"viz": {"image": "deskhub/base:latest", "needs": {"gpu": "shared"}}}
    assert list(merge_environments(site, {}).environments) == ["viz"]


def test_the_form_shows_icon_and_applications():
    catalogue = Catalogue.from_site({"mx": MX_IMAGE})
    assert catalogue.get("mx").apps == (App("PyMOL", "pymol", True),)
    html = render_options_form(catalogue)
    assert '<img class="icon" src="https://icons.example.org/mx.svg" alt="">' in html
    assert "Applications: PyMOL" in html


# -- the pool: images of reachable nodes, warnings logged once -----------------------------
def entry(tags, name, image_id, **labels):
    return {
        "Id": image_id,
        "RepoTags": tags,
        "Labels": {"deskhub.environment.name": name, **labels},
    }


def pool_with(*snapshots):
    nodes = []
    for snap in snapshots:
        node = Node(NodeConfig(name=snap.name, endpoint="unix:///nowhere"))
        node.snapshot = snap
        nodes.append(node)
    return NodePool(nodes)


def test_the_pool_reads_environments_from_reachable_nodes_only():
    up = NodeSnapshot(
        "a", True, environment_images=(entry(["deskhub/mx:latest"], "mx", "sha256:1"),)
    )
    down = NodeSnapshot(
        "b", False, environment_images=(entry(["deskhub/viz:latest"], "viz", "sha256:2"),)
    )
    pool = pool_with(up, down)
    found, warnings = pool.image_environments()
    assert list(found) == ["mx"] and warnings == []
    # the in-flight reservations' copy of a snapshot keeps its images
    assert pool.nodes["a"].planning_snapshot().environment_images == up.environment_images


def test_warnings_are_logged_once_and_their_end_is_noted(caplog):
    bad = entry(["deskhub/mx:1"], "mx", "sha256:1", **{"deskhub.needs.memory": "lots"})
    pool = pool_with(NodeSnapshot("a", True, environment_images=(bad,)))
    with caplog.at_level(logging.INFO, logger="JupyterHub.deskhub.nodes"):
        for _ in range(3):  # three polls of the same images
            pool.nodes["a"].snapshot = NodeSnapshot("a", True, environment_images=(dict(bad),))
            _, warnings = pool.image_environments()
        pool.log_warnings("site", ["one"])
        pool.log_warnings("site", ["one"])
        pool.nodes["a"].snapshot = NodeSnapshot("a", True)
        assert pool.image_environments() == ({}, [])
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [
        f"environment warning: {warnings[0]}",
        "environment warning: one",
        f"environment warning resolved: {warnings[0]}",
    ]
    assert "deskhub.needs.memory='lots'" in warnings[0]
