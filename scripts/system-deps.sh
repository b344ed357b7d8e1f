#!/bin/sh
# Install the Debian packages beep-mail needs, only those that are missing.
# (GnuPG, isync, swaks and Sequoia's sq are what the tests talk to.)
#   system-deps.sh python   what `python3 -m venv` needs
#   system-deps.sh test     what the test suite talks to
set -eu

missing=""
case "${1:-test}" in
python)
    python3 -c "import ensurepip, venv" 2>/dev/null || missing="python3-venv"
    ;;
test)
    command -v gpg >/dev/null 2>&1 || missing="$missing gnupg"
    command -v mbsync >/dev/null 2>&1 || missing="$missing isync"
    command -v swaks >/dev/null 2>&1 || missing="$missing swaks"
    # Sequoia's command line, a second OpenPGP implementation to test against.
    command -v sq >/dev/null 2>&1 || missing="$missing sq"
    ;;
esac

[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
    echo "Note: missing Debian packages:$missing (run as root to install them)" >&2
fi
