# Sourced by scripts/setup.sh and scripts/install: messages and Debian
# packages.

say() { printf '%s: %s\n' "${SCRIPT_NAME:-pgtls}" "$*" >&2; }

apt_updated=no
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only when they are empty or stale (install fails).
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -q
        apt_updated=yes
    fi
    if ! apt-get install -y -q "$@"; then
        [[ $apt_updated == yes ]] && return 1
        apt-get update -q
        apt_updated=yes
        apt-get install -y -q "$@"
    fi
}

can_install() { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; }
