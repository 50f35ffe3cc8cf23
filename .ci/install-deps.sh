#!/usr/bin/env bash
# Installs everything rpa needs to build, test, fuzz and benchmark on Debian 12,
# from Debian's packages only. Run as root; non-interactive; safe to re-run.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkgconf git
  clang libclang-rt-14-dev            # libFuzzer and the clang sanitizer runtimes
  libboost-context-dev                # fibers (runtime)
  libboost-fiber-dev                  # baseline in the runtime benchmark only
  liburing-dev                        # io_uring reactor (runtime)
  libmimalloc-dev                     # KV arena (memory)
  libeigen3-dev                       # kernels (attention)
  libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run this script as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
