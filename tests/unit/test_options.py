import pytest

from deskhub.spawner.catalogue import Catalogue, Environment, Needs
from deskhub.spawner.options import OptionsError, choose_environment, options_from_form

DESKTOP = Environment("desktop", "MATE desktop", "General", "deskhub/base:latest", default=True)
XFM = Environment("xfm", "XFM", "PyMca", "deskhub/xfm:latest", Needs(cpu=2, memory=4 * 1024**3))
CATALOGUE = Catalogue([DESKTOP, XFM])


def test_form_gives_the_chosen_environment():
    assert options_from_form({"environment": [" xfm "]}) == {"environment": "xfm"}


@pytest.mark.parametrize(
    "formdata",
    [{}, {"environment": []}, {"environment": [""]}, {"environment": ["a", "b"]}, {"other": ["x"]}],
)
def test_malformed_form_is_refused_with_one_sentence(formdata):
    with pytest.raises(OptionsError, match=r"^Pick exactly one environment"):
        options_from_form(formdata)


def test_known_environment_is_chosen():
    assert choose_environment({"environment": "xfm"}, CATALOGUE) is XFM


def test_no_options_give_the_default():
    assert choose_environment({}, CATALOGUE) is DESKTOP
    assert choose_environment(None, CATALOGUE) is DESKTOP


def test_no_default_and_no_choice_is_refused():
    catalogue = Catalogue([XFM, Environment("mx", "MX", "", "deskhub/mx:latest")])
    with pytest.raises(OptionsError, match="Choose an environment to start; available: xfm, mx."):
        choose_environment({}, catalogue)


def test_unknown_environment_names_the_choices():
    with pytest.raises(OptionsError) as err:
        choose_environment({"environment": "nope"}, CATALOGUE)
    assert str(err.value) == "Unknown environment 'nope'; pick one of: desktop, xfm."


@pytest.mark.parametrize("value", [None, 3, ["xfm"], {"a": 1}, ""])
def test_malformed_environment_value_is_refused(value):
    with pytest.raises(OptionsError, match="must be given by its name"):
        choose_environment({"environment": value}, CATALOGUE)


def test_unexpected_option_is_refused():
    with pytest.raises(OptionsError, match="Unknown option 'image'"):
        choose_environment({"environment": "xfm", "image": "evil/root:latest"}, CATALOGUE)


def test_long_unknown_name_is_shortened_in_the_message():
    with pytest.raises(OptionsError) as err:
        choose_environment({"environment": "x" * 500}, CATALOGUE)
    assert len(str(err.value)) < 120
