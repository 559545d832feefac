# Shared by scripts/serve and scripts/test: a Python 3.11+ virtualenv in ./.venv.

apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        # Debian ships venv and ensurepip in a separate package
        python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
        python3 -c 'import sys; assert sys.version_info >= (3, 11), "samarkiv needs Python 3.11+"'
        python3 -m venv .venv
    fi
    .venv/bin/pip install -q --upgrade pip
}
