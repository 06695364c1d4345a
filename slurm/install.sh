#!/usr/bin/env bash
# Install Debian's Slurm (slurmctld, slurmd, clients) and munge, plus slurmdbd
# and MariaDB for accounting unless --no-accounting. Idempotent: with
# everything installed it only checks (well under a second). Starts nothing:
# start.sh does. See README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCOUNTING=1

usage() {
  cat <<EOF
usage: $0 [--no-accounting]
  --no-accounting  skip slurmdbd and mariadb-server
exit: 0 installed, 1 failed, 2 bad usage
EOF
}

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

# If some package list is younger than a day, use the lists as they are;
# otherwise refresh them first (a stale list asks the mirror for files it no
# longer has). apt keeps the mirror's date on lists that did not change, so an
# unchanged suite may look old: the cost is one extra update (~1 s).
lists_fresh() {
  [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null) ]]
}

apt_install() {
  local created_policy=0
  export DEBIAN_FRONTEND=noninteractive
  lists_fresh || timeout 300 apt-get update -q
  # On a host with systemd the packages would start their services with
  # Debian's configs (and a system MariaDB); start.sh runs its own. The
  # standard policy-rc.d hook (exit 101) forbids that during the install.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  if ! timeout 900 apt-get install -y -q --no-install-recommends "$@"; then
    log "install failed; refreshing the package lists and retrying"
    timeout 300 apt-get update -q
    timeout 900 apt-get install -y -q --no-install-recommends "$@"
  fi
  if ((created_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
}

main() {
  local t0 pkgs=(slurmctld slurmd slurm-client munge) missing=() p
  t0=$(now_ms)
  while (($#)); do
    case $1 in
      --no-accounting) ACCOUNTING=0; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  require_root
  ((ACCOUNTING)) && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
  fi
  for p in slurmctld slurmd sinfo munged; do
    command -v "$p" >/dev/null || die "$p not found after installing"
  done
  ensure_munge_key
  echo "slurm: installed in $(since "$t0")s: $(slurmctld -V)$( ((ACCOUNTING)) && echo ", accounting (slurmdbd, $(mariadbd --version | awk '{print $1, $3}'))")$( ((${#missing[@]})) || echo ', nothing to do')"
}

main "$@"
