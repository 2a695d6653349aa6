#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers from Debian's libonnxruntime-dev package into $1.
# Uses a private apt configuration in a temporary folder: nothing on the system changes.
set -euo pipefail
dest=$1
suite=${ONNXFLIP_ORT_DEB_SUITE:-trixie}
mirror=${ONNXFLIP_ORT_DEB_MIRROR:-http://deb.debian.org/debian}
fail() {  # one line saying why and what to do instead
  echo "cannot fetch ONNX Runtime's C/C++ headers: $1; install them (Debian/Ubuntu: libonnxruntime-dev) or pass" \
       "-DONNXRUNTIME_INCLUDE_DIR=<folder with onnxruntime_c_api.h>" \
       "(pip: --config-settings=cmake.define.ONNXRUNTIME_INCLUDE_DIR=<folder>)" >&2
  exit 1
}
command -v apt-get >/dev/null && command -v dpkg >/dev/null || fail "apt-get and dpkg are not on this system"
keyring=${ONNXFLIP_ORT_DEB_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
[ -r "$keyring" ] || fail "Debian's archive keyring $keyring is missing (package debian-archive-keyring)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/prefs"
echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/sources.list"
opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
      -o "Dir::Etc::Preferences=$work/prefs/none" -o "Dir::Etc::PreferencesParts=$work/prefs"
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
      -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
apt-get "${opts[@]}" -qq update >"$work/log" 2>&1 || fail "apt-get update of $mirror $suite failed ($(tail -n 1 "$work/log"))"
(cd "$work" && apt-get "${opts[@]}" -qq download libonnxruntime-dev) >"$work/log" 2>&1 ||
  fail "downloading libonnxruntime-dev failed ($(tail -n 1 "$work/log"))"
dpkg -x "$work"/libonnxruntime-dev_*.deb "$work/root"
mkdir -p "$dest"
cp -r "$work/root/usr/include/onnxruntime/." "$dest/"
echo "ONNX Runtime headers from libonnxruntime-dev ($suite) in $dest"
