#!/bin/bash
# The Debian package end to end, on this machine (run as root, by .ci/run after scripts/test.sh):
# build it (scripts/package.sh), check its contents, conffiles and fields with dpkg-deb, lintian
# (no errors), install it with dpkg -i, check the _postsift user, directories and modes, rate the
# installed unit with systemd-analyze (security ≤ 2.0, verify), start the installed binary as the
# unit's user with the unit's ExecStart (no systemd here: setpriv) inside a loopback-only netns and
# send the demo's messages through a private Postfix, then purge and check nothing is left; then
# install again and purge with a DKIM key in /etc/postsift/dkim: the key is kept, root-only.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "scripts/package-test.sh: run as root (dpkg -i, netns)" >&2; exit 1; }

pass=0
fail=0
work=$(mktemp -d /tmp/postsift-package-test.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
ok() { echo "ok   - $1"; pass=$((pass + 1)); }
nok() { echo "FAIL - $1"; fail=$((fail + 1)); }
# check DESCRIPTION COMMAND...: passes when COMMAND exits 0; its output is shown on failure.
check() {
    local desc="$1"
    shift
    if "$@" >"$work/out" 2>&1; then ok "$desc"; else nok "$desc"; sed 's/^/     /' "$work/out" | tail -n 30; fi
}
finish() {
    echo "package-test: $pass passed, $fail failed"
    [ "$fail" = 0 ]
    exit
}

# The tools: cargo-deb (3.8.0 builds with Rust 1.95) and lintian.
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0
command -v lintian >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lintian >/dev/null

# A package left by an earlier, interrupted run.
if dpkg -s postsift >/dev/null 2>&1; then dpkg --purge postsift >/dev/null; fi

./scripts/package.sh >"$work/package.log" 2>&1
deb=$(tail -n1 "$work/package.log")
if [ -f "$deb" ]; then ok "scripts/package.sh built $deb"; else
    nok "scripts/package.sh built no .deb"; tail -n 30 "$work/package.log"; finish
fi

# Contents.
dpkg-deb -c "$deb" | awk '{print $1, $6}' >"$work/contents"
has() { grep -qx -e "$1 ./$2" "$work/contents"; }
for f in usr/sbin/postsift; do check "contains $f (0755)" has -rwxr-xr-x "$f"; done
for f in etc/postsift/postsift.toml lib/systemd/system/postsift.service \
    usr/share/man/man8/postsift.8.gz usr/share/man/man8/postsift-run.8.gz \
    usr/share/man/man8/postsift-check-config.8.gz usr/share/man/man8/postsift-reload.8.gz \
    usr/share/man/man8/postsift-quarantine-release.8.gz usr/share/man/man5/postsift.toml.5.gz \
    usr/share/doc/postsift/README.md usr/share/doc/postsift/master.cf.example \
    usr/share/doc/postsift/examples/postsift.example.toml usr/share/doc/postsift/copyright \
    usr/share/doc/postsift/changelog.Debian.gz \
    usr/share/postsift/dashboards/postsift.json usr/share/postsift/dashboards/alerts.yml \
    usr/share/bash-completion/completions/postsift usr/share/zsh/vendor-completions/_postsift \
    usr/share/fish/vendor_completions.d/postsift.fish; do
    check "contains $f (0644)" has -rw-r--r-- "$f"
done
# One manual page per subcommand, nested ones included, as `postsift --help` lists them.
subcommands() { "$@" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' | grep -vx help; }
missing=""
for c in $(subcommands ./target/release/postsift); do
    has -rw-r--r-- "usr/share/man/man8/postsift-$c.8.gz" || missing="$missing postsift-$c"
    for n in $(subcommands ./target/release/postsift "$c"); do
        has -rw-r--r-- "usr/share/man/man8/postsift-$c-$n.8.gz" || missing="$missing postsift-$c-$n"
    done
done
check "a manual page for every subcommand in postsift --help:${missing:- none missing}" test -z "$missing"
check "no generate-docs manual page (a hidden subcommand)" bash -c "! grep -q generate-docs '$work/contents'"
dpkg-deb -e "$deb" "$work/control"
check "conffiles is /etc/postsift/postsift.toml" diff <(echo /etc/postsift/postsift.toml) "$work/control/conffiles"
check "maintainer scripts postinst, prerm, postrm" test -x "$work/control/postinst" -a -x "$work/control/prerm" -a -x "$work/control/postrm"
check "Recommends clamav-daemon and spamd | rspamd" bash -c "dpkg-deb -f '$deb' Recommends | grep -q 'clamav-daemon.*spamd | rspamd'"
check "Depends adduser, not clamav or spamd" bash -c "d=\$(dpkg-deb -f '$deb' Depends); echo \"\$d\"; [[ \$d == *adduser* && \$d != *clam* && \$d != *spam* ]]"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./etc/postsift/postsift.toml >"$work/conffile"
check "the conffile passes check-config" ./target/release/postsift check-config --config "$work/conffile"
check "the conffile sets pid_file and spool_dir to the unit's directories" \
    grep -qx 'pid_file = "/run/postsift/postsift.pid"' "$work/conffile"
check "the conffile's spool_dir" grep -qx 'spool_dir = "/var/spool/postsift"' "$work/conffile"
check "man postsift.toml(5) renders" bash -c "dpkg-deb --fsys-tarfile '$deb' | tar -xO ./usr/share/man/man5/postsift.toml.5.gz | zcat | man -l - 2>&1 | grep -q max_sessions"

# lintian: no errors (warnings are listed and explained in README.md).
if command -v lintian >/dev/null; then
    lintian --fail-on error "$deb" >"$work/lintian" 2>&1
    rc=$?
    sed 's/^/     lintian: /' "$work/lintian"
    if [ $rc = 0 ] && ! grep -q '^E:' "$work/lintian"; then ok "lintian: no errors"; else nok "lintian: errors"; fi
else
    nok "lintian is not installed (apt-get install lintian)"
fi

# Install.
check "dpkg -i" dpkg -i "$deb"
cp "$work/out" "$work/install.log"
sed 's/^/     dpkg: /' "$work/install.log" | grep -i postsift || true
check "enabled on install: the conffile passes check-config" \
    test -L /etc/systemd/system/multi-user.target.wants/postsift.service
check "user _postsift: system uid, no login shell" bash -c \
    'IFS=: read -r n _ uid _ _ home shell < <(getent passwd _postsift); [ "$uid" -lt 1000 ] && [ "$shell" = /usr/sbin/nologin ] && [ "$home" = /var/lib/postsift ]'
check "group _postsift" getent group _postsift
if getent group clamav >/dev/null; then
    check "_postsift is in group clamav" bash -c "id -nG _postsift | tr ' ' '\n' | grep -qx clamav"
    check "the postinst says it added _postsift to group clamav" \
        grep -q "added user _postsift to group clamav" "$work/install.log"
fi
installed() { dpkg-query -W -f '${Status}' postsift | grep -qx 'install ok installed'; }
mode() { [ "$(stat -c '%a %U %G' "$2")" = "$1" ] || { stat -c '%a %U %G %n' "$2"; return 1; }; }
check "/var/lib/postsift 750 _postsift" mode "750 _postsift _postsift" /var/lib/postsift
check "/var/spool/postsift 750 _postsift" mode "750 _postsift _postsift" /var/spool/postsift
check "/etc/postsift 750 root:_postsift" mode "750 root _postsift" /etc/postsift
check "/etc/postsift/postsift.toml 640 root:_postsift" mode "640 root _postsift" /etc/postsift/postsift.toml
check "man postsift works" bash -c "man -P cat postsift 2>/dev/null | grep -q check-config"

# The installed unit.
unit=/lib/systemd/system/postsift.service
systemd-analyze security --offline=true "$unit" >"$work/security" 2>&1
level=$(sed -n 's/.*Overall exposure level for postsift.service: \([0-9.]*\).*/\1/p' "$work/security")
if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'; then
    ok "systemd-analyze security: exposure $level (≤ 2.0)"
else
    nok "systemd-analyze security: exposure '${level}' (must be ≤ 2.0)"
    grep -v '^  ✓' "$work/security" | tail -n 40 | sed 's/^/     /'
fi
check "systemd-analyze verify" systemd-analyze verify "$unit"
# What issue 21 asks of the unit, line by line.
for l in User=_postsift CapabilityBoundingSet= AmbientCapabilities= NoNewPrivileges=yes \
    ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes StateDirectory=postsift \
    RuntimeDirectory=postsift UMask=0077 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6' \
    SystemCallFilter=@system-service MemoryDenyWriteExecute=yes LockPersonality=yes \
    'ExecStartPre=/usr/sbin/postsift check-config --config /etc/postsift/postsift.toml' \
    'ExecReload=/usr/sbin/postsift reload --config /etc/postsift/postsift.toml' \
    Restart=on-failure LimitNOFILE=65536; do
    check "the unit has $l" grep -qxF "$l" "$unit"
done

# The README's install step `postsift import-amavis > /etc/postsift/postsift.toml`, on Debian's
# amavisd-new configuration, then `postsift check-config` (a copy: the demo below needs the
# package's own configuration).
cp -p /etc/postsift/postsift.toml "$work/conffile.orig"
/usr/sbin/postsift import-amavis /etc/amavis/conf.d >/etc/postsift/postsift.toml 2>"$work/import.err"
check "postsift import-amavis /etc/amavis/conf.d > /etc/postsift/postsift.toml (exit $?)" \
    grep -q '^\[banned\]' /etc/postsift/postsift.toml
check "import-amavis said on stderr what it did not carry over" grep -q '^not carried over: ' "$work/import.err"
check "the imported configuration kept the conffile's owner and mode" \
    mode "640 root _postsift" /etc/postsift/postsift.toml
check "postsift check-config accepts the import (as _postsift)" \
    runuser -u _postsift -- /usr/sbin/postsift check-config --config /etc/postsift/postsift.toml
cp -p "$work/conffile.orig" /etc/postsift/postsift.toml

# Run the installed binary as the unit's user, with the unit's ExecStart, through a private
# Postfix with the demo's messages (examples/demo.rs: private clamd, spamd and Postfix).
user=$(sed -n 's/^User=//p' "$unit")
group=$(sed -n 's/^Group=//p' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
config=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
# What systemd would do before ExecStart: RuntimeDirectory=postsift, mode 0750, the user's.
install -d -o "$user" -g "$group" -m 0750 /run/postsift
cargo build --example demo >"$work/build-demo.log" 2>&1 || { nok "build the demo"; tail "$work/build-demo.log"; }
. scripts/netns.sh
(
    export POSTSIFT_DAEMON="umask 0077; exec setpriv --reuid=$user --regid=$group --init-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- $exec_start"
    export POSTSIFT_DAEMON_CONFIG="$config"
    export POSTSIFT_DAEMON_SERVER_TOML=$'pid_file = "/run/postsift/postsift.pid"\nspool_dir = "/var/spool/postsift"'
    export POSTSIFT_DEMO_ARRIVED="$work/arrived"
    in_private_netns t-pkg ./target/debug/examples/demo
) >"$work/demo.log" 2>&1
demo_rc=$?
sed 's/^/     demo: /' "$work/demo.log" | grep -v '^     demo: *$' | head -n 80
check "the demo ran the installed postsift as $user (exit $demo_rc)" test "$demo_rc" = 0
check "postsift was started by setpriv as $user" grep -q "postsift started by: umask 0077; exec setpriv --reuid=$user" "$work/demo.log"
check "clean.eml and 8bit.eml arrived" bash -c "grep -qx clean.eml '$work/arrived' && grep -qx 8bit.eml '$work/arrived'"
check "gtube.eml arrived (tagged; spam.action = pass)" grep -qx gtube.eml "$work/arrived"
check "eicar-plain.eml and eicar-zip.eml did not arrive (virus.action = discard)" bash -c "! grep -q eicar '$work/arrived'"
check "gtube.eml was tagged as spam" grep -q "X-Spam-Flag: YES" "$work/demo.log"
check "the EICAR messages were found by clamd (run by postsift as $user)" grep -q "INFECTED: Postsift.Test.EICAR" "$work/demo.log"
check "postsift drained and exited 0 on SIGTERM" grep -q "postsift exited: Ok(ExitStatus(unix_wait_status(0)))" "$work/demo.log"
check "the pid file is gone after exit" test ! -e /run/postsift/postsift.pid
check "nothing in /var/spool/postsift owned by root" bash -c "[ -z \"\$(find /var/spool/postsift /var/lib/postsift /run/postsift -user root)\" ]"

# Remove keeps the data, purge deletes it.
touch /var/lib/postsift/keep-me && chown _postsift: /var/lib/postsift/keep-me
check "dpkg --remove" dpkg --remove postsift
check "remove keeps /var/lib/postsift and the conffile" test -e /var/lib/postsift/keep-me -a -e /etc/postsift/postsift.toml
check "dpkg --purge" dpkg --purge postsift
left=""
for p in /usr/sbin/postsift /etc/postsift /var/lib/postsift /var/spool/postsift /run/postsift \
    /lib/systemd/system/postsift.service /etc/systemd/system/multi-user.target.wants/postsift.service \
    /var/lib/systemd/deb-systemd-helper-enabled/postsift.service.dsh-also \
    /usr/share/doc/postsift /usr/share/postsift /usr/share/man/man8/postsift.8.gz; do
    [ -e "$p" ] && left="$left $p"
done
check "purge leaves nothing:${left:- (none)}" test -z "$left"
check "purge removed user and group _postsift" bash -c "! getent passwd _postsift && ! getent group _postsift"
check "dpkg knows no postsift" bash -c "! dpkg -s postsift"

# Never started without a configuration check-config accepts: a bad one in place on install
# (kept: --force-confold) leaves the service disabled, and the postinst says why.
mkdir -p /etc/postsift
printf '[server]\nmax_sessions = "many"\n' >/etc/postsift/postsift.toml
dpkg -i --force-confold "$deb" </dev/null >"$work/install2.log" 2>&1
check "dpkg -i with a bad configuration in place: installed (exit $?)" installed
sed 's/^/     dpkg: /' "$work/install2.log" | grep -i postsift || true
check "the postinst says check-config refused it and the service is not started" \
    grep -q "does not pass 'postsift check-config'; the service is not started" "$work/install2.log"
check "not enabled with a bad configuration" \
    test ! -e /etc/systemd/system/multi-user.target.wants/postsift.service
check "the unit itself would not start it either (ExecStartPre: check-config exits 64)" \
    bash -c "runuser -u _postsift -- /usr/sbin/postsift check-config --config /etc/postsift/postsift.toml; [ \$? = 64 ]"
# The conffile is kept over an upgrade (here a reinstall of the same version): the
# administrator's edit stays, with its owner and mode.
{ cat "$work/conffile"; echo "# edited by the administrator"; } >/etc/postsift/postsift.toml
dpkg -i "$deb" </dev/null >"$work/install3.log" 2>&1
check "dpkg -i over an installed postsift (exit $?)" installed
check "the edited conffile was kept" grep -qx "# edited by the administrator" /etc/postsift/postsift.toml
check "the edited conffile: 640 root:_postsift" mode "640 root _postsift" /etc/postsift/postsift.toml
check "no check-config complaint with the good configuration" \
    bash -c "! grep -q 'does not pass' '$work/install3.log'"
# Purge and the administrator's files (README: The package): a DKIM key made with `postsift dkim
# genkey` in /etc/postsift/dkim and given to _postsift, as the README says, is not the package's:
# purge keeps it, byte for byte, in an /etc/postsift only root can enter (the freed uid's next
# owner cannot read it), and says so; the conffile's dpkg copies go with everything else.
mkdir -p /etc/postsift/dkim
check "postsift dkim genkey into /etc/postsift/dkim" /usr/sbin/postsift dkim genkey --domain example.com \
    --selector pkgtest --out /etc/postsift/dkim/example.com.pkgtest.pem
chown -R _postsift: /etc/postsift/dkim
cp /etc/postsift/dkim/example.com.pkgtest.pem "$work/key.pem"
cp /etc/postsift/postsift.toml /etc/postsift/postsift.toml.dpkg-old
dpkg --purge postsift >"$work/purge.log" 2>&1
purge_rc=$?
check "dpkg --purge with a DKIM key in /etc/postsift/dkim (exit $purge_rc)" test "$purge_rc" = 0
sed 's/^/     dpkg: /' "$work/purge.log"
check "purge kept the DKIM key, unchanged" cmp "$work/key.pem" /etc/postsift/dkim/example.com.pkgtest.pem
check "purge made /etc/postsift root's, 0700" mode "700 root root" /etc/postsift
check "purge said what it kept and where" bash -c "grep -q 'purge kept' '$work/purge.log' && grep -q '/etc/postsift/dkim/example.com.pkgtest.pem' '$work/purge.log'"
check "purge deleted the conffile and its dpkg copy" bash -c "[ -z \"\$(find /etc/postsift -name 'postsift.toml*')\" ]"
left=""
for p in /usr/sbin/postsift /var/lib/postsift /var/spool/postsift /run/postsift \
    /lib/systemd/system/postsift.service /usr/share/doc/postsift; do
    [ -e "$p" ] && left="$left $p"
done
check "purge left nothing else:${left:- (none)}" test -z "$left"
check "purge removed user and group _postsift (the key's owner)" bash -c "! getent passwd _postsift && ! getent group _postsift"
rm -rf /etc/postsift
finish
