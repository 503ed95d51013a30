#!/usr/bin/env bash
# Base tools the test bed needs: openssl (its certificates) and Go (its build).
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || missing+=(golang-go)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
