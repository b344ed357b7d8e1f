#!/bin/sh
# `make run`: create a demo site on first use, then serve it in the foreground.
#   demo-site.sh VENV_BIN DIR
set -eu
BIN="$1"
DIR="$2"
DOMAIN="demo.gov.example"
OFFICER="officer@$DOMAIN"
PASSWORD="demo-password-123"
CONF="$DIR/conf/beepmail.toml"

if [ ! -f "$CONF" ]; then
    "$BIN/beepmail" init --domain "$DOMAIN" --dir "$DIR" --hostname localhost
    printf '%s\n' "$PASSWORD" | "$BIN/beepmail" user add "$OFFICER" --config "$CONF" \
        --name "Demo Officer" --password-stdin
    printf '%s\n' "$PASSWORD" | "$BIN/beepmail" user add "clerk@$DOMAIN" --config "$CONF" \
        --name "Demo Clerk" --password-stdin
    # A correspondent ministry; its next hop is a placeholder until you run one.
    "$BIN/beepmail" domain allow peer.gov.example --config "$CONF" \
        --next-hop 127.0.0.1:2626 --tls required
fi

cat <<INFO

  beep-mail demo site in $DIR ($DOMAIN)

  Point a mail client (Thunderbird, Outlook, swaks) at:
    SMTP server   127.0.0.1   port 2587   STARTTLS   normal password
    IMAP server   127.0.0.1   port 1143   STARTTLS   (or port 1993, SSL/TLS)
    user name     $OFFICER
    password      $PASSWORD
  The certificate is a self-signed development certificate ($DIR/var/tls/cert.pem):
  accept it in the client, or for swaks:
    swaks --server 127.0.0.1:2587 --tls --auth-user $OFFICER \\
          --auth-password $PASSWORD --from $OFFICER --to clerk@$DOMAIN

  Administer it with: $BIN/beepmail status --config $CONF
  Stop with Ctrl-C.

INFO
exec "$BIN/beepmail" serve --config "$CONF"
