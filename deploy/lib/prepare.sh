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

ensure_test_registry() {
  local fresh=0
  dpkg -s docker-registry >/dev/null 2>&1 || fresh=1
  apt_install docker-registry
  # on a systemd host the package starts a registry on :5000: the tests start their own
  if [ "$fresh" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
  fi
}

# Every image is built each time: an unchanged one comes from the layer cache in seconds,
# a changed Dockerfile or file is rebuilt (with the images FROM it). The images the
# embedded defaults name (FIRST_IMAGES) are built before anything starts; the other
# environment images (mx, imaging: several minutes each on a fresh machine) are built in
# the background by start_background_images, and the hub offers each one as its build
# lands (the catalogue comes from the images' labels).
FIRST_IMAGES=(base netguard xfm)

ensure_images() {
  DESKHUB_PYTHON="$VENV/bin/python" "$DESKHUB_ROOT/images/build" "${FIRST_IMAGES[@]}"
}

ensure_all_images() {
  DESKHUB_PYTHON="$VENV/bin/python" "$DESKHUB_ROOT/images/build"
}

# The environment images not in FIRST_IMAGES, in build order.
other_images() {
  "$DESKHUB_ROOT/images/build" --list | awk '{print $2}' | while read -r name; do
    [[ " ${FIRST_IMAGES[*]} " == *" $name "* ]] || echo "$name"
  done
}

# Build the other images in the background. Their output goes to LOG; when the build
# ends, LOG.status holds its exit status (what tests that need those images wait for);
# LOG.pid names it while it runs (a second call meanwhile starts no second build).
start_background_images() {
  local log=$1
  local -a names
  if [ -f "$log.pid" ] && kill -0 "$(cat "$log.pid")" 2>/dev/null; then
    say "the background build of the other images is still running (log: $log)"
    return 0
  fi
  mapfile -t names < <(other_images)
  rm -f "$log" "$log.status" "$log.pid"
  if [ ${#names[@]} -eq 0 ]; then
    echo 0 >"$log.status"
    return 0
  fi
  say "building ${names[*]} in the background (log: $log)"
  (
    status=0
    DESKHUB_PYTHON="$VENV/bin/python" "$DESKHUB_ROOT/images/build" "${names[@]}" \
      >"$log" 2>&1 </dev/null || status=$?
    echo "$status" >"$log.status"
  ) >/dev/null 2>&1 </dev/null &
  echo $! >"$log.pid"
  disown
}

prepare() {
  need_root
  ensure_system_packages
  ensure_docker
  ensure_venv
  ensure_proxy
  ensure_images
}

# Debian's OpenLDAP server and clients for tests/ldapserver.py, which starts its own slapd
# (own config, own database, a free loopback port). The package's own server is never
# wanted: debconf is told to skip its configuration (so no prompt, no database) and the
# packaged service is stopped and disabled wherever something started it.
ensure_test_ldap() {
  if ! dpkg -s slapd ldap-utils >/dev/null 2>&1; then
    echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
    apt_install slapd ldap-utils
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now slapd.service >/dev/null 2>&1 || true
  elif [ -s /run/slapd/slapd.pid ] && kill -0 "$(cat /run/slapd/slapd.pid)" 2>/dev/null; then
    # no systemd: the postinst may have started it through invoke-rc.d
    invoke-rc.d slapd stop >/dev/null 2>&1 || kill "$(cat /run/slapd/slapd.pid)" || true
  fi
}

# panva's oidc-provider (npm), pinned by tests/oidc/package-lock.json, into
# tests/oidc/node_modules (gitignored); skipped when that exact version is already there
ensure_test_oidc() {
  local dir="$DESKHUB_ROOT/tests/oidc"
  local want have
  want=$(sed -n 's/.*"oidc-provider": *"\([^"]*\)".*/\1/p' "$dir/package.json" | head -1)
  # (not installed yet: no file, so no version; `|| true` keeps set -e/pipefail quiet)
  have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
    "$dir/node_modules/oidc-provider/package.json" 2>/dev/null | head -1 || true)
  [ -n "$want" ] && [ "$want" = "$have" ] && return 0
  say "installing the test OpenID Connect provider (oidc-provider $want, npm)"
  (cd "$dir" && npm ci --no-audit --no-fund >/dev/null) \
    || die "npm could not install oidc-provider into $dir"
}
