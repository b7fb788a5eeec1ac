#!/usr/bin/env bash
# Installs the Debian packages the integration tests start for real (Prometheus, PostgreSQL,
# Chromium). Idempotent: does nothing when they are present. Needs root or sudo for apt-get.
set -euo pipefail
want=()
# A name with a slash is a path glob (PostgreSQL's server binaries are not on PATH).
need() {
  if [[ "$1" == */* ]]; then compgen -G "$1" >/dev/null || want+=("$2")
  else command -v "$1" >/dev/null 2>&1 || want+=("$2"); fi
}
# (filled in as integration tests need real servers)
[ -f scripts/system-deps.list ] && while read -r bin pkg; do
  [[ -z "$bin" || "$bin" == \#* ]] && continue
  need "$bin" "$pkg"
done < scripts/system-deps.list
if [ ${#want[@]} -eq 0 ]; then exit 0; fi
echo "installing Debian packages: ${want[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
