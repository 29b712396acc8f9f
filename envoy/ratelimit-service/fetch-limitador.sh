#!/usr/bin/env bash
# Puts limitador 0.14.0, patched with limitador-redis-only.patch, where the
# service's Cargo.toml [patch.crates-io] looks for it:
# <repository>/target/vendor/limitador-0.14.0.
#
# The crate comes from crates.io's static host (or from LIMITADOR_CRATE, a
# local copy of the same .crate file) and is refused unless its SHA-256 is
# the one below. Idempotent: a marker file records the patch it was made
# with, so a second run does nothing and an edited patch re-extracts.
set -euo pipefail

version=0.14.0
sha256=77e33de992fdc347850a81f1ed242cc702900a9651a2b5d044d153a2db5e2d1a
url="https://static.crates.io/crates/limitador/limitador-${version}.crate"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
patch_file="$here/limitador-redis-only.patch"
vendor="$repo/target/vendor"
dest="$vendor/limitador-${version}"
marker="$dest/.palisade-patched"

for tool in sha256sum tar patch; do
  command -v "$tool" >/dev/null 2>&1 || { echo "fetch-limitador: '$tool' is needed" >&2; exit 1; }
done

patch_sum="$(sha256sum "$patch_file" | cut -d' ' -f1)"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$patch_sum" ]; then
  exit 0
fi

mkdir -p "$vendor"
work="$(mktemp -d "$vendor/.limitador.XXXXXX")"
trap 'rm -rf "$work"' EXIT

crate="$work/limitador-${version}.crate"
if [ -n "${LIMITADOR_CRATE:-}" ]; then
  cp "$LIMITADOR_CRATE" "$crate"
else
  echo "fetch-limitador: downloading $url"
  if command -v curl >/dev/null 2>&1; then
    curl -sSfL --retry 3 --max-time 120 -o "$crate" "$url"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 120 -O "$crate" "$url"
  else
    echo "fetch-limitador: curl or wget is needed (or LIMITADOR_CRATE=/path/to/limitador-${version}.crate)" >&2
    exit 1
  fi
fi

got="$(sha256sum "$crate" | cut -d' ' -f1)"
if [ "$got" != "$sha256" ]; then
  echo "fetch-limitador: refusing limitador-${version}.crate: sha256 $got, expected $sha256" >&2
  exit 1
fi

tar -xzf "$crate" -C "$work"
(cd "$work/limitador-${version}" && patch -p1 --forward --batch --quiet < "$patch_file")
echo "$patch_sum" > "$work/limitador-${version}/.palisade-patched"

rm -rf "$dest"
mv "$work/limitador-${version}" "$dest"
echo "fetch-limitador: limitador ${version} patched in ${dest#"$repo"/}"
