# deskhub's JupyterHub configuration: everything comes from the site YAML
# ($DESKHUB_SITE_CONFIG, over hub_config/defaults.yaml); then *.py files in
# $DESKHUB_CONFIG_D (default: STATE_DIR/jupyterhub_config.d) are loaded, as an escape hatch.
import glob
import os

from deskhub.hub_config.hub import configure

site = configure(c)  # noqa: F821 - `c` is provided by JupyterHub
_extra = os.environ.get("DESKHUB_CONFIG_D") or os.path.join(
    site["hub"]["state_dir"], "jupyterhub_config.d"
)
for _path in sorted(glob.glob(os.path.join(_extra, "*.py"))):
    load_subconfig(_path)  # noqa: F821 - provided by JupyterHub
