"""The spawn page's environment picker (HTML), built from the catalogue."""

from __future__ import annotations

from html import escape

from .catalogue import Catalogue

_STYLE = """
<style>
.deskhub-envs { display: grid; gap: .6em; margin: 1em 0; }
.deskhub-env { display: flex; gap: .8em; align-items: flex-start; border: 1px solid #ccc;
  border-radius: 6px; padding: .7em 1em; cursor: pointer; }
.deskhub-env:has(input:checked) { border-color: #f37626; background: #fff7f0; }
.deskhub-env input { margin-top: .35em; }
.deskhub-env .title { font-weight: 600; }
.deskhub-env .needs { color: #666; font-size: 90%; }
</style>
"""


def render_options_form(catalogue: Catalogue) -> str:
    """Radio cards: title, one-line description and what each environment needs."""
    default = catalogue.default
    cards = []
    for env in catalogue:
        checked = " checked" if default is not None and env.name == default.name else ""
        cards.append(
            f'<label class="deskhub-env" for="env-{escape(env.name)}">'
            f'<input type="radio" name="environment" id="env-{escape(env.name)}"'
            f' value="{escape(env.name)}"{checked} required>'
            f'<span><span class="title">{escape(env.title)}</span><br>'
            f'<span class="description">{escape(env.description)}</span><br>'
            f'<span class="needs">Needs {escape(env.needs.describe())}</span></span>'
            "</label>"
        )
    return (
        _STYLE
        + '<p>Choose the environment for your session:</p><div class="deskhub-envs">'
        + "".join(cards)
        + "</div>"
    )
