#!/usr/bin/env bash
# Installs what building and testing Sluice needs on Debian 12, and nothing
# that is already there. Safe to run again. Needs root (or sudo) only when
# something is missing.
set -euo pipefail

# clang compiles the eBPF C (clang-16 or newer preferred; Debian 12's default
# clang 14 also works), libbpf-dev gives bpf_helpers.h, bpftool lets tests
# check attachments, iproute2 makes test network namespaces, util-linux gives
# nsenter/setpriv, linux-libc-dev the UAPI headers, wrk drives load through
# restarts, nftables is the baseline of the policy benchmark; curl,
# nghttp2-client (h2load, nghttp) and python3-grpcio are the real HTTP/1.1,
# HTTP/2 and gRPC peers of the L7 tests; python3-prometheus-client parses
# /metrics in the observability tests, and pip brings rotel (below).
packages=(clang-16 libbpf-dev bpftool iproute2 util-linux linux-libc-dev pkg-config wrk nftables
  curl nghttp2-client python3-grpcio python3-prometheus-client python3-pip)
# `--bench`: nginx (with its stream module, for TCP) and haproxy, the proxies
# the benchmarks compare against (their services are not started: the
# benchmark runs its own), and a font for the report's chart.
if [ "${1:-}" = "--bench" ]; then packages+=(nginx-light libnginx-mod-stream haproxy fonts-dejavu-core); fi

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "sluice: installing ${missing[*]}"
  if [ ${#sudo[@]} -gt 0 ] && ! command -v sudo >/dev/null; then
    echo "sluice: need root to install ${missing[*]} (apt-get install -y ${missing[*]})" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # policy-rc.d: packages with a daemon (nginx, haproxy) must not start one.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools from PyPI, each into its own folder (--target keeps Debian's
# Python untouched): rotel, a real OTLP receiver for the trace tests, and
# sslyze, a real TLS scanner for the node-to-node port.
pypi_tool() { # NAME VERSION MARKER [PIP OPTIONS...]
  local dir=/opt/sluice-tools/$1
  if [ ! -e "$dir/$3" ]; then
    echo "sluice: installing $1 $2 (PyPI) into $dir"
    "${sudo[@]}" /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$dir" "${@:4}" "$1==$2"
  fi
}
pypi_tool rotel 0.0.1a15 rotel/rotel-agent
pypi_tool sslyze 6.1.0 sslyze
# docker-compose 1.29 (the Python one, without Docker's engine) checks
# docker/compose.yaml where the `docker compose` client is absent. Its own
# pins do not install on Debian 12's Python 3.11, so its dependencies are
# pinned here.
if [ ! -e /opt/sluice-tools/docker-compose/bin/docker-compose ] && ! docker compose version >/dev/null 2>&1; then
  pypi_tool docker-compose 1.29.2 bin/docker-compose --no-deps
  "${sudo[@]}" /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target /opt/sluice-tools/docker-compose PyYAML==6.0.1 docopt==0.6.2 python-dotenv==0.21.1 texttable==1.7.0 \
    jsonschema==3.2.0 docker==5.0.3 requests==2.31.0 websocket-client==0.59.0 distro==1.9.0 dockerpty==0.4.1
fi

if ! command -v cargo >/dev/null; then
  echo "sluice: cargo not found: install Rust 1.95 or newer (https://rustup.rs), then run this again" >&2
  exit 1
fi
