# Shared helpers for hack/lab/* scripts. Sourced, not executed.
# shellcheck shell=bash
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$LAB_DIR/versions.env"
KTI_LAB_CACHE=${KTI_LAB_CACHE:-/var/cache/kti-lab}
KTI_LAB_STATE=${KTI_LAB_STATE:-/var/lib/kti-lab}
export KTI_LAB_CACHE KTI_LAB_STATE

_lab_t0=${_lab_t0:-$(date +%s)}
ts() { date '+%H:%M:%S'; }
say() { printf '[%s] %s: %s\n' "$(ts)" "${LAB_PROG:-lab}" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Go environment: everything persisted under the cache dir.
go_env() {
  export GOMODCACHE="$KTI_LAB_CACHE/go/mod" GOCACHE="$KTI_LAB_CACHE/go/build"
  export GOPATH="$KTI_LAB_CACHE/go/path" GOFLAGS="-buildvcs=false" GOTOOLCHAIN=local
  export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
  export PATH="$(dirname "$GO_BIN"):$PATH"
  [ -x "$GO_BIN" ] || die "Go toolchain not found at $GO_BIN (set GO_BIN in versions.env)"
}

# short_hash STRING... -> 12 hex chars
short_hash() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }
file_hash() { cat "$@" | sha256sum | cut -c1-12; }

apt_mirror() {
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1=="deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$m" ] || die "cannot read an apt mirror from /etc/apt/sources.list.d/debian.sources"
  printf '%s\n' "$m"
}

kind_bin() { printf '%s\n' "$KTI_LAB_CACHE/bin/kind-$KIND_VERSION"; }
kubectl_bin() { printf '%s\n' "$KTI_LAB_CACHE/k8s/$K8S_VERSION/bin/kubectl"; }
node_ref_file() { printf '%s\n' "$KTI_LAB_CACHE/node-image.ref"; }

# Host tools the build needs; installed from Debian when missing (root + apt).
ensure_host_tools() {
  local missing=""
  command -v jq >/dev/null || missing="$missing jq"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || missing="$missing gcc libc6-dev"
  [ -x /bin/busybox ] || command -v busybox >/dev/null || missing="$missing busybox-static"
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "missing host tools:$missing (install them)"
  say "installing host tools:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || die "apt-get install$missing failed"
}
