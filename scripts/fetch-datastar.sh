#!/usr/bin/env bash
# Fetches the official Datastar v1 browser bundle (v1.0.2, MIT, (c) Star Federation) at build time and
# writes static/datastar.js (+ static/datastar.js.map), checksum verified.
#
# Source: the crates.io package rama-http 0.4.0, which embeds Datastar's unmodified bundle at
# src/service/web/endpoint/response/datastar.js (npm only has pre-v1 builds; see design.md). The crate is
# fetched with cargo, which verifies the .crate against the registry index, and is NOT compiled (its MSRV
# is above our toolchain). The bundle is then checked against a pinned sha256.
#
# Idempotent: does nothing when static/datastar.js already has the pinned checksum. Works offline once
# the crate is in cargo's registry cache ($CARGO_HOME/registry/cache).
set -euo pipefail

CRATE=rama-http
VERSION=0.4.0
INNER=src/service/web/endpoint/response/datastar.js
SHA256=2837d87acf6ee0ba8e4e63765926c25a98d63883b02f88be194a86b81d3fd24a

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="$root/static"
out="$out_dir/datastar.js"

say() { printf 'fetch-datastar: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$out" ] && [ -f "$out.map" ] && [ "$(sha "$out")" = "$SHA256" ]; then
  say "static/datastar.js is up to date (sha256 verified)"
  exit 0
fi

command -v cargo >/dev/null 2>&1 || die "cargo is needed to fetch $CRATE $VERSION from crates.io"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-datastar.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
find_crate() {
  find "$cargo_home/registry/cache" -maxdepth 2 -name "$CRATE-$VERSION.crate" -print -quit 2>/dev/null || true
}

crate_file="$(find_crate)"
if [ -z "$crate_file" ]; then
  say "fetching $CRATE $VERSION with cargo (not compiled)"
  mkdir -p "$tmp/proj/src"
  cat >"$tmp/proj/Cargo.toml" <<TOML
[package]
name = "fetch-datastar"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$CRATE = { version = "=$VERSION", default-features = false }
TOML
  echo 'fn main() {}' >"$tmp/proj/src/main.rs"
  # Default CARGO_HOME: the crate lands in the shared registry cache, so later runs need no network.
  (cd "$tmp/proj" && CARGO_TARGET_DIR="$tmp/target" cargo fetch --quiet) ||
    die "cargo fetch of $CRATE $VERSION failed"
  crate_file="$(find_crate)"
  [ -n "$crate_file" ] || die "cargo fetch succeeded but $CRATE-$VERSION.crate is not in $cargo_home/registry/cache"
fi

say "extracting $INNER from $crate_file"
mkdir -p "$tmp/x"
tar -xzf "$crate_file" -C "$tmp/x" "$CRATE-$VERSION/$INNER" ||
  die "$INNER is missing from $crate_file"
# The source map is optional: take it when the crate has one.
tar -xzf "$crate_file" -C "$tmp/x" "$CRATE-$VERSION/$INNER.map" 2>/dev/null || true

got="$(sha "$tmp/x/$CRATE-$VERSION/$INNER")"
if [ "$got" != "$SHA256" ]; then
  die "checksum mismatch for $INNER in $CRATE $VERSION:
  expected $SHA256
  got      $got
refusing to install it"
fi

mkdir -p "$out_dir"
# Write through temporary names in the same directory, then rename: a reader never sees half a file.
if [ -f "$tmp/x/$CRATE-$VERSION/$INNER.map" ]; then
  cp "$tmp/x/$CRATE-$VERSION/$INNER.map" "$out_dir/.datastar.js.map.tmp"
  mv -f "$out_dir/.datastar.js.map.tmp" "$out.map"
fi
cp "$tmp/x/$CRATE-$VERSION/$INNER" "$out_dir/.datastar.js.tmp"
mv -f "$out_dir/.datastar.js.tmp" "$out"
say "wrote static/datastar.js (Datastar $(head -c 200 "$out" | sed -n 's|^// Datastar \(v[^ ]*\).*|\1|p' | head -1), sha256 $SHA256)"
