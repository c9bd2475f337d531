#!/bin/bash
# Installs the Debian packages postsift's demo and tests run for real (Postfix and its
# smtp-source/smtp-sink, clamd, spamd, rspamd, postgrey, redis-server, unbound as the tests' DNS
# server, amavisd-new for its amavisd-release script, python3-dkim (dkimpy) as an independent
# DKIM verifier, PostgreSQL and MariaDB for the SQL store) without letting any of them start
# or touch the network.
# Idempotent. Never writes /etc/postfix: Postfix is installed as "No configuration".
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PKGS="postfix clamav-daemon clamav-base clamav-testfiles spamd spamc spamassassin prometheus rspamd jq
      iproute2 procps zip ca-certificates postgrey redis-server amavisd-new
      unbound openssl python3-dkim postgresql mariadb-server"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  # "No configuration": the postinst neither writes main.cf nor starts a daemon.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  # Keep every post-install script from starting a daemon (freshclam would reach for the internet).
  POLICY=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"; chmod +x "$POLICY"; created=1
  fi
  trap '[ $created = 1 ] && rm -f "$POLICY"' EXIT
  apt-get update -qq
  apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold $missing
fi
echo "install-deps: ok"
