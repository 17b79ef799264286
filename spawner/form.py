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
.deskhub-env .needs, .deskhub-env .apps { color: #666; font-size: 90%; }
.deskhub-env img.icon { width: 40px; height: 40px; object-fit: contain; }
</style>
"""


def render_options_form(catalogue: Catalogue) -> str:
    """Radio cards: icon, title, one-line description, applications and needs."""
    default = catalogue.default
    cards = []
    for env in catalogue:
        checked = " checked" if default is not None and env.name == default.name else ""
        icon = f'<img class="icon" src="{escape(env.icon)}" alt="">' if env.icon else ""
        apps = ", ".join(app.name for app in env.apps)
        apps_line = f'<span class="apps">Applications: {escape(apps)}</span><br>' if apps else ""
        cards.append(
            f'<label class="deskhub-env" for="env-{escape(env.name)}">'
            f'<input type="radio" name="environment" id="env-{escape(env.name)}"'
            f' value="{escape(env.name)}"{checked} required>{icon}'
            f'<span><span class="title">{escape(env.title)}</span><br>'
            f'<span class="description">{escape(env.description)}</span><br>{apps_line}'
            f'<span class="needs">Needs {escape(env.needs.describe())}</span></span>'
            "</label>"
        )
    return (
        _STYLE
        + '<p>Choose the environment for your session:</p><div class="deskhub-envs">'
        + "".join(cards)
        + "</div>"
    )
