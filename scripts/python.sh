# Sourced by scripts/setup.sh: the interpreter .venv is made with.

# Debian's own python3 when there is one.  Debian links the interpreter into
# the program and builds it for speed; a python3 found first on PATH may be a
# plain shared-library build (pyenv's default is one) that runs pgtls's
# Python noticeably slower.  PGTLS_PYTHON names another.
pick_python() {
    if [[ -n ${PGTLS_PYTHON:-} ]]; then
        echo "$PGTLS_PYTHON"
    elif [[ -x /usr/bin/python3 ]]; then
        echo /usr/bin/python3
    else
        echo python3
    fi
}

# Whether .venv was made from an interpreter other than $1, or its python
# does not start.
venv_from_other_python() {
    local base
    base=$(.venv/bin/python -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null) ||
        return 0
    [[ $base != "$(realpath "$(command -v "$1")")" ]]
}
