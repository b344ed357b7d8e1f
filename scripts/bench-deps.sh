#!/bin/sh
# What `make bench` needs beyond `make install`, installed only when missing.
#
# Debian (as root only): GnuPG, for the gpg-per-message baseline; Postfix and
# the Cyrus SASL tools, for the relay baseline. Postfix is installed with the
# debconf answer "No configuration": no /etc/postfix/main.cf is written and
# the system's Postfix is never started. The bench runs a private instance of
# its own, from a temporary folder, on loopback ports, and stops it when done.
# Postfix is left out when another mail server (an MTA package) is installed,
# since Debian would remove that one to make room.
#
# Dovecot (dovecot-imapd), for the IMAP baseline, the same way: the bench runs
# a private instance with its own dovecot.conf from a temporary folder. Debian
# would start the system's Dovecot right after installing it: a policy-rc.d
# that says no is put in place for the install when the machine has none, and
# on a machine run by systemd the units the package enabled are disabled again,
# so that no system IMAP server starts at boot either.
#
# PyPI, into the project's virtual environment: the `bench` group of
# pyproject.toml, then pysequoia, which is allowed to fail: without it the
# bench reports its baseline as null.
#
#   scripts/bench-deps.sh [VENV_BIN]      (default: .venv/bin)
set -eu

bin="${1:-.venv/bin}"

missing=""
command -v gpg >/dev/null 2>&1 || missing="$missing gnupg"
if ! command -v postconf >/dev/null 2>&1; then
    other_mta=$(dpkg-query -W -f '${Package} ${Status}\n' exim4-base sendmail-bin \
                opensmtpd nullmailer msmtp-mta 2>/dev/null | grep " installed" || true)
    if [ -n "$other_mta" ]; then
        echo "Note: another mail server is installed ($other_mta); the bench" \
             "will not install Postfix over it, and reports Postfix as null." >&2
    else
        missing="$missing postfix"
    fi
fi
command -v saslpasswd2 >/dev/null 2>&1 || missing="$missing sasl2-bin"
dpkg-query -W -f '${Status}' libsasl2-modules-db 2>/dev/null | grep -q " installed" \
    || missing="$missing libsasl2-modules-db"
dpkg-query -W -f '${Status}' libsasl2-modules 2>/dev/null | grep -q " installed" \
    || missing="$missing libsasl2-modules"
# A Dovecot already there is left as it is, whatever its units say.
new_dovecot=""
command -v dovecot >/dev/null 2>&1 || new_dovecot=yes
dpkg-query -W -f '${Status}' dovecot-imapd 2>/dev/null | grep -q " installed" \
    || missing="$missing dovecot-imapd"

if [ -n "$missing" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian packages:$missing"
        # No system mail configuration: the bench configures its own instance.
        echo "postfix postfix/main_mailer_type select No configuration" \
            | debconf-set-selections
        apt-get update -qq
        # No service of these packages is started by the install.
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            policy=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            trap 'rm -f "$policy"' EXIT
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends $missing >/dev/null
        if [ -n "$policy" ]; then
            rm -f "$policy"
            trap - EXIT
        fi
        if [ -n "$new_dovecot" ] && [ -d /run/systemd/system ]; then
            systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 \
                || true
        fi
    else
        echo "Note: missing Debian packages:$missing (run as root to install" \
             "them); the bench reports what could not run as null." >&2
    fi
fi

# The `bench` group, read from pyproject.toml so the list lives in one place.
packages=$("$bin/python" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as file:
    project = tomllib.load(file)["project"]
print(" ".join(project["optional-dependencies"]["bench"]))
EOF
)
# shellcheck disable=SC2086  # one word per requirement
"$bin/python" -m pip install --quiet $packages
"$bin/python" -c "import pysequoia" 2>/dev/null \
    || "$bin/python" -m pip install --quiet --only-binary=:all: pysequoia \
    || echo "Note: pysequoia did not install; its baseline will be null." >&2
