# Sourced by the scripts here: debian_packages WHO [COMMAND:PACKAGE ...] installs, with apt-get,
# the Debian package of each command (or Python module, as "python3-venv") that is missing.
debian_packages() {
    who=$1; shift
    missing=""
    for pair in "$@"; do
        what=${pair%%:*}; package=${pair#*:}
        if [ "$what" = venv ]; then
            python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$missing $package"
        else
            command -v "$what" >/dev/null 2>&1 || missing="$missing $package"
        fi
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "$who: please install the Debian packages:$missing" >&2
        exit 1
    fi
    echo "$who: installing Debian packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
}
