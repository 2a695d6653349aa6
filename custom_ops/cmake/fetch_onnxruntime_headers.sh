#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ API headers from Debian's libonnxruntime-dev package into $1.
# Uses a private apt configuration in a temporary folder: nothing on the system changes.
set -euo pipefail
dest=$1
suite=${ONNXFLIP_ORT_DEB_SUITE:-trixie}
mirror=${ONNXFLIP_ORT_DEB_MIRROR:-http://deb.debian.org/debian}
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "apt-get and dpkg are needed to fetch the ONNX Runtime headers" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/prefs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror $suite main" > "$work/sources.list"
opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
      -o "Dir::Etc::Preferences=$work/prefs/none" -o "Dir::Etc::PreferencesParts=$work/prefs"
      -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
      -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
apt-get "${opts[@]}" -qq update
(cd "$work" && apt-get "${opts[@]}" -qq download libonnxruntime-dev)
dpkg -x "$work"/libonnxruntime-dev_*.deb "$work/root"
mkdir -p "$dest"
cp -r "$work/root/usr/include/onnxruntime/." "$dest/"
echo "ONNX Runtime headers from libonnxruntime-dev ($suite) in $dest"
