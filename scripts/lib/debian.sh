# Sourced by scripts/setup.d/*.sh: Debian packages installed only when missing, quietly, as root or with sudo.
#   debian_missing PKG...   prints the packages of the list that are not installed (one line, may be empty)
#   debian_install PKG...   apt-get update + install --no-install-recommends of those, and says what it installed
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive

debian_missing() {
  local p out=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  echo "${out[*]}"
}

debian_install() {
  $sudo apt-get update -qq >/dev/null
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  echo "installed: $*"
}
