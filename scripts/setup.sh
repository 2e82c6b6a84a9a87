# Shared by scripts/test and scripts/demo: install what a fresh Debian 12
# machine lacks (PostgreSQL's server binaries, python3-venv), create .venv
# and install pgtls into it.  Sourced from the repository root.

source scripts/apt.sh

# The same search as tests/integration/pgserver.py find_bindir().
have_pg_binaries() {
    local dir tool candidates=(/usr/lib/postgresql/*/bin)
    [[ -n ${PGTLS_PG_BINDIR:-} ]] && candidates+=("$PGTLS_PG_BINDIR")
    command -v pg_ctl >/dev/null && candidates+=("$(dirname "$(command -v pg_ctl)")")
    for dir in "${candidates[@]}"; do
        for tool in initdb pg_ctl pg_isready psql; do
            [[ -x $dir/$tool ]] || continue 2
        done
        return 0
    done
    return 1
}

if ! have_pg_binaries; then
    if can_install; then
        say "installing PostgreSQL (Debian's postgresql package)"
        apt_install postgresql
    elif command -v apt-get >/dev/null; then
        say "PostgreSQL server binaries not found: install Debian's postgresql package (as root: apt-get install postgresql), or run this script as root"
        exit 1
    else
        say "PostgreSQL server binaries (initdb, pg_ctl, pg_isready, psql) not found and this is not Debian:"
        say "install your distribution's PostgreSQL server package, or set PGTLS_PG_BINDIR to its bin directory"
        exit 1
    fi
fi

# The benchmark's smoke test compares with PgBouncer and stunnel (scripts/test
# asks for them).
if [[ -n ${PGTLS_NEED_BENCH_RELAYS:-} ]]; then
    # Each Debian package installs a program of its name.
    for package in pgbouncer stunnel4; do
        command -v "$package" >/dev/null || [[ -x /usr/sbin/$package ]] && continue
        if can_install; then
            say "installing Debian's $package package, for the benchmark"
            apt_install "$package"
        else
            say "$package not found: install Debian's $package package (the benchmark's smoke test needs it)"
            exit 1
        fi
    done
fi

# The PROXY protocol tests put HAProxy in front of pgtls (scripts/test asks for it).
if [[ -n ${PGTLS_NEED_HAPROXY:-} ]] && ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]]; then
    if can_install; then
        say "installing Debian's haproxy package, for the PROXY protocol tests"
        apt_install haproxy
    else
        say "haproxy not found: install Debian's haproxy package (the PROXY protocol tests need it)"
        exit 1
    fi
fi

# The service tests verify the systemd units and use systemd-socket-activate.
if [[ -n ${PGTLS_NEED_SYSTEMD_TOOLS:-} ]] && ! command -v systemd-analyze >/dev/null; then
    if can_install; then
        say "installing systemd's tools (Debian's systemd package, for the unit tests)"
        apt_install systemd
    else
        say "systemd-analyze not found: install Debian's systemd package (the service tests need it)"
        exit 1
    fi
fi

# pgtls.service's ExecReload= runs kill (Debian's procps package, absent from
# minimal images), which systemd-analyze verify looks for.
if [[ -n ${PGTLS_NEED_SYSTEMD_TOOLS:-} && ! -x /usr/bin/kill ]]; then
    if can_install; then
        say "installing Debian's procps package (kill, for the unit tests)"
        apt_install procps
    else
        say "/usr/bin/kill not found: install Debian's procps package (the service tests need it)"
        exit 1
    fi
fi

source scripts/python.sh
python=$(pick_python)
if [[ -x .venv/bin/python ]] && command -v "$python" >/dev/null && venv_from_other_python "$python"; then
    say "recreating .venv with $python (it was made with another interpreter)"
    rm -rf .venv
fi

if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv with $python"
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        if can_install; then
            say "$python -m venv does not work: installing python3-venv"
            apt_install python3-venv
            python=$(pick_python)
            "$python" -m venv .venv
        else
            say "$python -m venv does not work: install python3-venv (Debian) or your Python's venv module"
            exit 1
        fi
    fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# The versions the suite passed on (constraints/tested.txt), unless
# PGTLS_CONSTRAINTS names another file; set and empty, the newest allowed.
constraints=()
[[ -n ${PGTLS_CONSTRAINTS-constraints/tested.txt} ]] &&
    constraints=(-c "${PGTLS_CONSTRAINTS-constraints/tested.txt}")
# compat mode puts the checkout on sys.path, where twistd's plugin scan finds
# twisted/plugins/pgtls_plugin.py (the default editable mode hides it).
pip_log=$(mktemp)
say "installing pgtls and its dependencies into .venv (pip)"
# The packages pip fetches, as it goes: the first run takes a while.
if ! .venv/bin/pip install -e "${PGTLS_PIP_TARGET:-.[test]}" "${constraints[@]}" \
        --config-settings editable_mode=compat 2>&1 |
        tee "$pip_log" | sed -un -e 's/^Collecting /  collecting /p' \
            -e 's/^Processing .*\/\([^/]*\.whl\)$/  collecting \1/p' >&2; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    say "pip install failed"
    exit 1
fi
rm -f "$pip_log"
# twistd finds the pgtls plugin through twisted/plugins; rebuild its cache.
.venv/bin/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
