#!/usr/bin/env bash
# The container tools of scripts/images and tests/delivery/test_images.py, from Debian's packages:
# buildah (builds the images, no daemon), podman (imports the mmdebstrap bases, runs the images),
# mmdebstrap (makes the bases from Debian packages where the official base images cannot be pulled)
# and runc (podman's runtime here: crun refuses a cgroup v1/v2 hybrid host, docs/images.md).
# Idempotent and quiet; `apt-get update` only when a package is missing.
set -euo pipefail
. "$(dirname "$0")/../lib/debian.sh"
missing=$(debian_missing buildah podman mmdebstrap runc)
[ -z "$missing" ] || debian_install $missing
