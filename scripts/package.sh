#!/bin/bash
# Builds the Debian package: the release binary, the manual pages and shell completions (from the
# CLI definitions, `postsift generate-docs`), the conffile (postsift.example.toml with the
# package's paths: pid file in /run/postsift, spool in /var/spool/postsift), then cargo-deb.
# Needs cargo-deb (`cargo install --locked cargo-deb`). The last line of output is the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "scripts/package.sh: needs cargo-deb: cargo install --locked cargo-deb" >&2; exit 1; }

cargo build --release --locked --bin postsift >&2
out=target/package
rm -rf "$out"
mkdir -p "$out/man"
./target/release/postsift generate-docs "$out/man" >/dev/null
mv "$out/man/completions" "$out/completions"
gzip -9n "$out"/man/man*/*

# The conffile: the example's safe defaults, with the pid file `postsift reload` (ExecReload)
# needs and the spool in the directory the unit makes writable.
sed -e 's|^# pid_file = "/run/postsift/postsift.pid"$|pid_file = "/run/postsift/postsift.pid"|' \
    -e 's|^# spool_dir = "/var/spool/postsift"$|spool_dir = "/var/spool/postsift"|' \
    postsift.example.toml >"$out/postsift.toml"
grep -q '^pid_file = "/run/postsift/postsift.pid"$' "$out/postsift.toml"
grep -q '^spool_dir = "/var/spool/postsift"$' "$out/postsift.toml"
./target/release/postsift check-config --config "$out/postsift.toml" >/dev/null

rm -rf target/debian
mkdir -p target/debian
cargo deb --no-build --strip --output target/debian/ >&2
ls target/debian/postsift_*.deb
