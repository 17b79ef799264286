# Shared set-up for deploy/up and deploy/test: everything deskhub needs on a fresh
# Debian 12 machine, each step skipped when already done. Sourced, not run.
# shellcheck shell=bash

DESKHUB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$DESKHUB_ROOT/.venv"

say() { printf '\033[1m[deskhub]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[deskhub] %s\033[0m\n' "$*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" = 0 ] || die "run this as root (it installs packages and starts Docker)"
}

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_system_packages() {
  local pkgs=(docker.io debootstrap python3-venv git ca-certificates curl)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  apt_install "${pkgs[@]}"
}

ensure_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  say "starting the Docker engine"
  if [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  die "the Docker engine did not start; see /var/log/dockerd.log"
}

ensure_venv() {
  local stamp="$VENV/.deskhub-installed" want
  want=$(sha256sum "$DESKHUB_ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  say "installing deskhub's Python packages into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$DESKHUB_ROOT[test]" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import deskhub.spawner, jupyterhub" || die "Python install failed"
  echo "$want" > "$stamp"
}

ensure_proxy() {
  command -v configurable-http-proxy >/dev/null 2>&1 && return 0
  say "installing configurable-http-proxy (npm)"
  npm install -g --silent configurable-http-proxy@5 >/dev/null 2>&1 \
    || die "npm could not install configurable-http-proxy"
}

ensure_test_prometheus() {
  local fresh=0
  dpkg -s prometheus prometheus-node-exporter >/dev/null 2>&1 || fresh=1
  apt_install prometheus prometheus-node-exporter
  # on a systemd host the packages start services on :9090 and :9100: the tests need none
  if [ "$fresh" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service prometheus-node-exporter.service >/dev/null 2>&1 || true
  fi
}

ensure_images() {
  DESKHUB_PYTHON="$VENV/bin/python" "$DESKHUB_ROOT/images/build" --if-missing
}

prepare() {
  need_root
  ensure_system_packages
  ensure_docker
  ensure_venv
  ensure_proxy
  ensure_images
}
