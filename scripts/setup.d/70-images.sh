#!/usr/bin/env bash
# The container tools of scripts/images and tests/delivery/test_images.py, from Debian's packages:
# buildah (builds the images, no daemon), podman (imports the mmdebstrap bases, runs the images),
# mmdebstrap (makes the bases from Debian packages where the official base images cannot be pulled)
# and runc (podman's runtime here: crun refuses a cgroup v1/v2 hybrid host, docs/images.md).
# Idempotent and quiet; `apt-get update` only when a package is missing.
set -euo pipefail
packages=(buildah podman mmdebstrap runc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
