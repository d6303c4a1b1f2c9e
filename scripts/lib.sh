# shellcheck shell=bash
# Shared by the install-*.sh scripts (source it; it defines functions only).

# venv_install VENV PKG==VER...: create the venv if missing and pip-install
# the pinned packages it does not have at exactly that version.
venv_install() {
    local venv=$1
    shift
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    local missing=() pkg name want have
    for pkg in "$@"; do
        name=${pkg%%==*}
        want=${pkg##*==}
        have=$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
        [ "$have" = "$want" ] || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "installing ${missing[*]} into $venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "${missing[@]}"
    else
        echo "$* already in $venv"
    fi
}

# apt_install PKG...: install the Debian packages (as root; noninteractive).
# Callers pass only the packages whose commands are missing.
apt_install() {
    (($#)) || return 0
    if [ "$(id -u)" = 0 ]; then
        echo "installing $* from Debian"
        # The lock timeout: scripts/test.sh runs the install scripts side by
        # side in the background.
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "missing Debian packages: $* (apt-get install them, or run as root)" >&2
        return 1
    fi
}
