"""Fuzzing what users send when they start a session: the spawn form's fields, the REST
API's ``user_options``, and the form's HTML built from what admins and images describe.

Every input ends in a validated environment of the catalogue or in :class:`OptionsError`
with one short line for the user; nothing else escapes. The examples are derandomized
(the same inputs on every run, so CI is deterministic); ``DESKHUB_FUZZ_EXAMPLES=2000``
runs more of them, ``DESKHUB_FUZZ_RANDOM=1`` draws new ones each run.
"""

from __future__ import annotations

import os
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deskhub.spawner.catalogue import App, Catalogue, Environment, Needs
from deskhub.spawner.form import render_options_form
from deskhub.spawner.options import OptionsError, choose_environment, options_from_form

FUZZ = settings(
    max_examples=int(os.environ.get("DESKHUB_FUZZ_EXAMPLES", "150")),
    derandomize=not os.environ.get("DESKHUB_FUZZ_RANDOM"),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DESKTOP = Environment("desktop", "MATE desktop", "General", "deskhub/base:latest", default=True)
XFM = Environment("xfm", "XFM", "PyMca", "deskhub/xfm:latest", Needs(cpu=2, memory=4 * 1024**3))
MX = Environment("mx", "MX", "DIALS", "deskhub/mx:latest")
WITH_DEFAULT = Catalogue([DESKTOP, XFM, MX])
WITHOUT_DEFAULT = Catalogue([XFM, MX])
NAMES = WITH_DEFAULT.names()
FORM_REFUSAL = "Pick exactly one environment from the list, then press Start."

# strings that have broken parsers elsewhere: near-misses of real names, whitespace and
# control characters, path traversal, markup, format strings, huge and non-BMP text
NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "xfm\x00",
        "XFM",
        " xfm\n",
        "xfm\u00a0",
        "\u200bxfm",
        "ｘｆｍ",
        "../../etc/passwd",
        "desktop/../xfm",
        "<script>alert(1)</script>",
        "%s%s%n",
        "{environment}",
        "'; DROP TABLE spawners; --",
        "\ud800",
        "🖥️",
        "x" * 100_000,
        "desktop" * 7,
    ]
)
TEXT = st.text(max_size=60) | NASTY | st.sampled_from(NAMES)
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def assert_one_short_line(err: OptionsError) -> None:
    message = str(err)
    assert message and message[0].isupper() and message.endswith("."), message
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert len(message) < 300, message
    assert "Traceback" not in message


# -- the spawn form -------------------------------------------------------------------------
FORM_KEYS = st.sampled_from(["environment", "_xsrf", "image", "environment_file"]) | TEXT
FORM_VALUES = st.lists(TEXT, max_size=3)


@FUZZ
@given(formdata=st.dictionaries(FORM_KEYS, FORM_VALUES, max_size=5))
def test_form_fields_give_one_environment_or_one_sentence(formdata: dict[str, list[str]]):
    values = formdata.get("environment") or []
    try:
        options = options_from_form(formdata)
    except OptionsError as err:
        assert str(err) == FORM_REFUSAL
        assert len(values) != 1 or not values[0].strip()
        return
    # the only thing a form can ask for is one environment, by its name, as typed
    assert options == {"environment": values[0].strip()}
    try:
        env = choose_environment(options, WITH_DEFAULT)
    except OptionsError as err:
        assert_one_short_line(err)
        assert options["environment"] not in NAMES
        assert "pick one of: desktop, xfm, mx." in str(err)
    else:
        assert env is WITH_DEFAULT.get(options["environment"])


@FUZZ
@given(formdata=st.dictionaries(FORM_KEYS, JSON, max_size=4))
def test_form_parser_survives_values_that_are_not_lists_of_text(formdata: dict[str, Any]):
    """JupyterHub hands lists of str, and file uploads as lists of dicts: nothing the form
    parser gets makes it fail other than with the form's one sentence."""
    try:
        options = options_from_form(formdata)
    except OptionsError as err:
        assert str(err) == FORM_REFUSAL
    else:
        assert set(options) == {"environment"}
        assert isinstance(options["environment"], str) and options["environment"]


# -- REST user_options ----------------------------------------------------------------------
def expected_choice(user_options: Any, catalogue: Catalogue) -> Environment | None:
    """The oracle: what ``choose_environment`` must give (None: it must refuse)."""
    if user_options is None:
        user_options = {}
    if not isinstance(user_options, dict) or set(user_options) - {"environment"}:
        return None
    if "environment" not in user_options:
        return catalogue.default
    name = user_options["environment"]
    return catalogue.get(name) if isinstance(name, str) else None


USER_OPTIONS = (
    st.fixed_dictionaries({"environment": TEXT | JSON})
    | st.fixed_dictionaries({"environment": st.sampled_from(NAMES)}, optional={"x": JSON})
    | st.dictionaries(TEXT, JSON, max_size=3)
    | JSON
)


@FUZZ
@given(user_options=USER_OPTIONS, has_default=st.booleans())
def test_user_options_give_the_named_environment_or_one_sentence(
    user_options: Any, has_default: bool
):
    catalogue = WITH_DEFAULT if has_default else WITHOUT_DEFAULT
    expected = expected_choice(user_options, catalogue)
    try:
        env = choose_environment(user_options, catalogue)
    except OptionsError as err:
        assert expected is None, f"refused {user_options!r}: {err}"
        assert_one_short_line(err)
    else:
        assert expected is not None and env is expected


@pytest.mark.parametrize(
    ("user_options", "message"),
    [
        ([], "The options must be a JSON object"),
        ("xfm", "The options must be a JSON object"),
        ({"environment": "x" * 100_000}, "Unknown environment 'xxxxxxxxxx"),
        ({"y" * 100_000: 1}, "Unknown option 'yyyyyyyy"),
        ({"environment": "a\nb\x00"}, r"Unknown environment 'a\nb\x00'"),
        ({"environment": "xfm", 3: "x", "a": 1}, "Unknown option '3'"),
        ({"environment": 1}, "The environment must be given by its name"),
    ],
)
def test_examples_hypothesis_found_stay_fixed(user_options: Any, message: str):
    with pytest.raises(OptionsError) as err:
        choose_environment(user_options, WITH_DEFAULT)
    assert str(err.value).startswith(message)
    assert_one_short_line(err.value)


# -- the form's HTML ------------------------------------------------------------------------
SAFE_TAGS = {"style", "p", "div", "label", "input", "img", "span", "br"}


class FormReader(HTMLParser):
    """The tags and radio buttons of the rendered form, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.radios: list[dict[str, str | None]] = []
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        attributes = dict(attrs)
        if tag == "input":
            self.radios.append(attributes)
        self._in_title = tag == "span" and attributes.get("class") == "title"
        if self._in_title:
            self.titles.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles[-1] += data


# what an image's labels or an admin could write: any text, markup included
LABEL_TEXT = st.text(min_size=1, max_size=40) | st.sampled_from(
    ['"><script>alert(1)</script>', "</label><img src=x onerror=alert(1)>", "&amp;", "'"]
)
ENVIRONMENTS = st.lists(
    st.builds(
        Environment,
        name=LABEL_TEXT,
        title=LABEL_TEXT,
        description=LABEL_TEXT,
        image=st.just("deskhub/base:latest"),
        icon=st.sampled_from(["", "https://icons.example.org/a.svg", 'https://x/"onload="x']),
        apps=st.lists(st.builds(App, name=LABEL_TEXT, exec=st.just("true")), max_size=2).map(tuple),
    ),
    max_size=4,
    unique_by=lambda env: env.name,
)


@FUZZ
@given(environments=ENVIRONMENTS)
def test_form_html_offers_exactly_the_catalogue_whatever_its_text(
    environments: list[Environment],
):
    reader = FormReader()
    reader.feed(render_options_form(Catalogue(environments)))
    reader.close()
    assert reader.tags <= SAFE_TAGS  # no markup from a title, description or name
    assert [radio["value"] for radio in reader.radios] == [env.name for env in environments]
    assert all(radio["name"] == "environment" for radio in reader.radios)
    assert [newlines(t) for t in reader.titles] == [newlines(e.title) for e in environments]


def newlines(text: str) -> str:
    """Text as a browser shows it: every line break one "\\n" (HTML folds CR and CRLF)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
