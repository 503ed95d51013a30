#!/usr/bin/env bash
# Base tools the test bed needs: openssl (its certificates) and Go (its build).
set -euo pipefail
. "$(dirname "$0")/../lib/debian.sh"
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || missing+=(golang-go)
[ ${#missing[@]} -eq 0 ] || debian_install "${missing[@]}"
