#!/usr/bin/env bash
# Lay canaryd out as a systemd service on this host (docs/guides/systemd.md):
#
#   /opt/canaryd                     a venv with canaryd installed from this checkout
#   /opt/canaryd/share/doc/canaryd   the guide (the unit's Documentation=)
#   /etc/systemd/system/canaryd.service
#   /etc/systemd/system/canaryd-nginx-test.service   `nginx -t` as root, for the nginx router
#   /usr/lib/sysusers.d/canaryd.conf the system user canaryd (created now)
#   /usr/lib/tmpfiles.d/canaryd.conf /etc/canaryd root:canaryd 0750, /var/lib/canaryd (made now)
#   /etc/canaryd/canaryd.yaml        systemd/canaryd.yaml, only if there is none
#   /etc/canaryd/tokens.yaml         config/tokens.example.yaml, only if there is none
#   /etc/canaryd/webhook-token       a random token, only if there is none
#
# Idempotent: run it again after `git pull` to upgrade canaryd and the unit. It never
# overwrites the config or the secrets; it puts their owner and mode back (root:canaryd 0640).
# It does not enable or start the service: edit the config first (the guide says how). It
# grants nothing through polkit: an nginx host adds systemd/canaryd-nginx.rules by hand.
#
# A shell script, not a Makefile target: the steps are ordered side effects on a host (users,
# ownership, a venv), not files rebuilt from others, and a stock Debian 12 has bash but no make.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deployment/install.sh [--root DIR] [--python PYTHON] [--system-site-packages]

  --root DIR       lay everything out under DIR instead of / (a test or an image build);
                   the venv then lives at DIR/opt/canaryd and only works from there
  --python PYTHON  the Python (3.11 or newer) the venv is made from (default: python3)
  --system-site-packages
                   make the venv with --system-site-packages and install canaryd with
                   pip --no-deps: canaryd's dependencies come from PYTHON's own packages
                   (pip still fetches the build backend, setuptools, unless cached)
Run as root (it creates a system user and chowns /etc/canaryd).
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

ROOT=/
PYTHON=python3
SYSTEM_SITE=0
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) [[ $# -ge 2 ]] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --python) [[ $# -ge 2 ]] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "run as root: it creates the canaryd user and chowns /etc/canaryd"
[[ -d $ROOT ]] || die "--root $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}                                   # "" for /, so "$R/etc" is /etc
for tool in systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || die "$tool not found: this host has no systemd"
done
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is not Python 3.11 or newer (pass --python)"

VENV=$R/opt/canaryd
ETC=$R/etc/canaryd

# systemd-sysusers/-tmpfiles take --root only when it is not /, and read their files from it.
sd_root=()
[[ -n $R ]] && sd_root=(--root="$ROOT")

install_venv() {
    local venv_args=() pip_args=(--quiet --disable-pip-version-check)
    if [[ $SYSTEM_SITE -eq 1 ]]; then
        venv_args=(--system-site-packages)
        pip_args+=(--no-deps)
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        # Debian's python3 has no venv module (ensurepip) until python3-venv is installed.
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
            || die "$PYTHON cannot make a venv: apt-get install python3-venv"
        "$PYTHON" -m venv "${venv_args[@]}" "$VENV"
    fi
    # Build from a clean copy: an in-tree build leaves build/ behind, whose stale modules
    # a later build would ship.
    local copy
    copy=$(mktemp -d)
    tar -C "$SOURCE" --exclude=.git --exclude=build --exclude=dist --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=tests --exclude=.venv --exclude='.*_cache' \
        -cf - . | tar -C "$copy" -xf -
    "$VENV/bin/pip" install "${pip_args[@]}" --upgrade "$copy" || { rm -rf "$copy"; exit 1; }
    rm -rf "$copy"
    install -D -m 0644 "$SOURCE/docs/guides/systemd.md" "$VENV/share/doc/canaryd/systemd.md"
}

install_units() {
    install -D -m 0644 "$SOURCE/systemd/canaryd.service" "$R/etc/systemd/system/canaryd.service"
    install -D -m 0644 "$SOURCE/systemd/canaryd-nginx-test.service" \
        "$R/etc/systemd/system/canaryd-nginx-test.service"
    install -D -m 0644 "$SOURCE/systemd/canaryd.sysusers" "$R/usr/lib/sysusers.d/canaryd.conf"
    install -D -m 0644 "$SOURCE/systemd/canaryd.tmpfiles" "$R/usr/lib/tmpfiles.d/canaryd.conf"
    mkdir -p "$R/etc"
    systemd-sysusers "${sd_root[@]}" canaryd.conf
    systemd-tmpfiles "${sd_root[@]}" --create canaryd.conf
}

# The canaryd group's id from the root's own /etc/group: under --root the host has no such group.
canaryd_gid() {
    local gid
    gid=$(awk -F: '$1 == "canaryd" { print $3 }' "$R/etc/group")
    [[ -n $gid ]] || die "$R/etc/group has no canaryd group after systemd-sysusers"
    echo "$gid"
}

# A file the service reads: root:canaryd 0640. Content is kept if the file exists.
config_file() {
    local dest=$1 from=$2 gid=$3
    if [[ ! -e $dest ]]; then
        if [[ $from == random ]]; then
            (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$dest")
        else
            install -m 0640 "$from" "$dest"
        fi
        echo "installed $dest"
    fi
    chown "0:$gid" "$dest"
    chmod 0640 "$dest"
}

install_config() {
    local gid
    gid=$(canaryd_gid)
    config_file "$ETC/canaryd.yaml" "$SOURCE/systemd/canaryd.yaml" "$gid"
    config_file "$ETC/tokens.yaml" "$SOURCE/config/tokens.example.yaml" "$gid"
    config_file "$ETC/webhook-token" random "$gid"
}

reload_systemd() {
    if [[ -z $R && -d /run/systemd/system ]]; then
        systemctl daemon-reload
    fi
}

install_venv
install_units
install_config
reload_systemd

cat <<EOF
canaryd is laid out under ${ROOT}. Next:
  edit $ETC/canaryd.yaml and $ETC/tokens.yaml (replace the example digests)
  sudo -u canaryd /opt/canaryd/bin/canaryd check -c /etc/canaryd/canaryd.yaml
  systemctl enable --now canaryd
EOF
