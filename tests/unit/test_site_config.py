import textwrap

import pytest

from deskhub.hub_config.hub import idle_culler
from deskhub.hub_config.site import SiteConfigError, load_site, merge


def write(tmp_path, text):
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_alone_are_valid():
    site = load_site(None)
    assert site["nodes"] == [{"name": "local", "endpoint": "unix:///var/run/docker.sock"}]
    assert site["sessions"]["idle_timeout"] == 3600
    assert set(site["environments"]) == {"desktop", "xfm"}


def test_an_entry_may_leave_the_image_to_the_images_labels(tmp_path):
    site = load_site(
        write(
            tmp_path,
            """
            environments:
              mx: {title: MX at our site, needs: {memory: 16G}}
              old: {hidden: true}
              viz: {image: v, icon: "https://icons.example.org/viz.svg", virtualgl: true,
                    apps: [{name: ParaView, exec: paraview, gpu: true}]}
            """,
        )
    )
    assert site["environments"]["mx"] == {"title": "MX at our site", "needs": {"memory": "16G"}}
    assert site["environments"]["old"] == {"hidden": True}


def test_site_yaml_is_laid_over_defaults(tmp_path):
    site = load_site(
        write(
            tmp_path,
            """
            environments:
              xfm: {hidden: true, image: deskhub/xfm:latest}
              mx: {title: MX, image: deskhub/mx:latest, needs: {cpu: 4, memory: 16G}}
            data:
              experiments:
                mx-2026-1: {path: /srv/data/mx-2026-1, users: [alice]}
            sessions: {idle_timeout: 600}
            """,
        )
    )
    assert site["environments"]["xfm"]["hidden"] is True
    assert site["environments"]["xfm"]["title"] == "X-ray fluorescence microscopy"
    assert site["environments"]["mx"]["needs"] == {"cpu": 4, "memory": "16G"}
    assert site["sessions"] == {
        "idle_timeout": 600,
        "uid": 1000,
        "gid": 1000,
        "pids_limit": 2048,
        "start_timeout": 120,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sesions: {idle_timeout: 5}\n", "'sesions' is not a known setting"),
        ("sessions: {idle_timout: 5}\n", "'sessions.idle_timout' is not a known setting"),
        ("sessions: {idle_timeout: soon}\n", "'sessions.idle_timeout' 'soon' is not of type"),
        ("environments: {mx: {title: MX, apps: [{name: A}]}}\n", "'environments.mx.apps.0'"),
        ("environments: {mx: {image: a, icon: 'ftp://x/i.png'}}\n", "'environments.mx.icon'"),
        (
            "environments: {mx: {image: a, needs: {memory: lots}}}\n",
            "'environments.mx.needs.memory'",
        ),
        (
            "environments: {'Bad Name': {image: a}}\n",
            "'environments.Bad Name' is not an allowed name",
        ),
        (
            "environments: {mx: {image: a, needs: {gpu: maybe}}}\n",
            "must be none, shared or {exclusive: N}, not 'maybe'",
        ),
        ("data: {experiments: {e1: {path: relative/dir}}}\n", "'data.experiments.e1.path'"),
        (
            "data: {experiments: {'../etc': {path: /etc}}}\n",
            "'data.experiments.../etc' is not an allowed name",
        ),
        ("nodes: [{name: a, endpoint: ssh://x}]\n", "'nodes.0.endpoint'"),
        (
            "environments: {a: {image: a, default: true}, b: {image: b, default: true}}\n",
            "marks 3 defaults",
        ),
        ("nodes: [{name: a, endpoint: 'unix:///a'}, {name: a, endpoint: 'unix:///b'}]\n", "same"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("hub: {bind_url: [\n", "is not valid YAML"),
    ],
)
def test_mistakes_name_the_key_and_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(SiteConfigError) as err:
        load_site(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SiteConfigError, match="cannot read site config"):
        load_site(tmp_path / "nope.yaml")


def test_merge_replaces_lists_and_merges_mappings():
    assert merge({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2]}, "c": 3}) == {
        "a": {"x": 1, "y": [2]},
        "b": 1,
        "c": 3,
    }


def test_idle_culler_service_has_the_narrowest_role():
    services, roles = idle_culler(600)
    assert services[0]["name"] == "idle-culler"
    assert services[0]["command"][1:] == ["-m", "jupyterhub_idle_culler", "--timeout=600"]
    assert roles == [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    ]
    assert idle_culler(0) == ([], [])


def test_a_multi_node_gpu_site_parses_into_nodes_and_needs(tmp_path):
    from deskhub.spawner.catalogue import Catalogue, Needs
    from deskhub.spawner.inventory import NodeConfig, TlsFiles, node_from_spec
    from deskhub.spawner.placement import Gpu

    site = load_site(
        write(
            tmp_path,
            """
            environments:
              viz: {image: v, needs: {gpu: shared, gpu_memory: 8G, node_labels: {beamline: mx}}}
              train: {image: t, needs: {cpu: 8, memory: 64G, gpu: {exclusive: 2}}}
            placement: {policy: pack, image_bonus: 0.5}
            nodes:
              - name: gpu-1
                endpoint: tcp://10.0.0.5:2376
                address: 10.0.0.5
                hub_connect_url: http://10.0.0.1:8081
                labels: {beamline: mx, gpu: a40}
                tls: {ca: /etc/deskhub/ca.pem, cert: /etc/deskhub/hub.pem, key: /etc/deskhub/k.pem}
                gpus:
                  - {id: GPU-aaaa, model: A40, memory: 48G, desktop_slots: 6}
                  - {id: GPU-bbbb, model: A40, memory: 48G}
            """,
        )
    )
    assert node_from_spec(site["nodes"][0]) == NodeConfig(
        name="gpu-1",
        endpoint="tcp://10.0.0.5:2376",
        address="10.0.0.5",
        labels={"beamline": "mx", "gpu": "a40"},
        gpus=(Gpu("GPU-aaaa", "A40", 48 * 1024**3, 6), Gpu("GPU-bbbb", "A40", 48 * 1024**3, 4)),
        tls=TlsFiles("/etc/deskhub/ca.pem", "/etc/deskhub/hub.pem", "/etc/deskhub/k.pem"),
        hub_connect_url="http://10.0.0.1:8081",
    )
    catalogue = Catalogue.from_site(site["environments"])
    assert catalogue.get("viz").needs == Needs(
        1.0, 2 * 1024**3, "shared", 1, 8 * 1024**3, (("beamline", "mx"),)
    )
    assert catalogue.get("train").needs == Needs(8.0, 64 * 1024**3, "exclusive", 2)
    assert site["placement"]["policy"] == "pack"
