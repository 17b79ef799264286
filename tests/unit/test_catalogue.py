import pytest

from deskhub.spawner.catalogue import Catalogue, Environment, Needs
from deskhub.spawner.form import render_options_form
from deskhub.spawner.units import format_memory, parse_memory


def test_catalogue_from_site_parses_needs_and_hides_entries():
    catalogue = Catalogue.from_site(
        {
            "desktop": {"title": "Desk", "image": "deskhub/base:latest", "default": True},
            "xfm": {
                "title": "XFM",
                "description": "PyMca",
                "image": "deskhub/xfm:latest",
                "needs": {"cpu": 2, "memory": "4G"},
            },
            "old": {"image": "deskhub/old:latest", "hidden": True},
        }
    )
    assert list(catalogue) == [
        Environment("desktop", "Desk", "", "deskhub/base:latest", Needs(), default=True),
        Environment("xfm", "XFM", "PyMca", "deskhub/xfm:latest", Needs(2.0, 4 * 1024**3)),
    ]
    assert catalogue.default.name == "desktop"


def test_single_environment_is_the_default():
    assert Catalogue.from_site({"a": {"image": "i"}}).default.name == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2G", 2 * 1024**3), ("512M", 512 * 1024**2), ("1.5G", 3 * 1024**3 // 2), (1000, 1000)],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "two gigs", "G", True])
def test_parse_memory_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_memory(text)


def test_format_memory():
    assert format_memory(4 * 1024**3) == "4 GiB"
    assert format_memory(1536 * 1024**2) == "1.5 GiB"


def test_form_lists_title_description_needs_and_escapes():
    catalogue = Catalogue(
        [
            Environment("desktop", "Desk <b>", "A & B", "i", Needs(1, 2 * 1024**3), default=True),
            Environment("xfm", "XFM", "PyMca", "j", Needs(2, 4 * 1024**3)),
        ]
    )
    html = render_options_form(catalogue)
    assert 'value="desktop" checked required' in html
    assert 'value="xfm" required' in html
    assert "Desk &lt;b&gt;" in html and "A &amp; B" in html
    assert "Needs 1 CPU, 2 GiB memory" in html
    assert "Needs 2 CPUs, 4 GiB memory" in html
