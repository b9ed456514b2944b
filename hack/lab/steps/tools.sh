# Step "tools": etcd, coredns, local-path-provisioner (Go, from the module proxy) and pause (C).
# Output: $KTI_LAB_CACHE/tools/<name>-<version>/<binary>
# shellcheck shell=bash

tools_dir() { printf '%s\n' "$KTI_LAB_CACHE/tools/$1"; }

# go_install_cached NAME VERSION MODULE@VERSION [PKG]: `go install` into the cache.
go_install_cached() {
  local name=$1 ver=$2 modver=$3 out
  out=$(tools_dir "$name-$ver")
  if [ -x "$out/$name" ]; then say "tools/$name $ver: cached"; return 0; fi
  mkdir -p "$out"
  say "tools/$name $ver: go install $modver"
  GOBIN="$out" "$GO_BIN" install -trimpath -ldflags "-s -w" "$modver"
  [ -x "$out/$name" ] || die "go install $modver did not produce $out/$name"
}

build_etcd() {
  local out mod
  out=$(tools_dir "etcd-$ETCD_VERSION")
  if [ -x "$out/etcd" ]; then say "tools/etcd $ETCD_VERSION: cached"; return 0; fi
  # go.etcd.io/etcd/server/v3 has replace directives (../api etc.), so `go install` refuses it;
  # a wrapper module that only requires it builds the same code.
  mod="$KTI_LAB_CACHE/tools/.etcd-wrapper-$ETCD_VERSION"
  rm -rf "$mod" && mkdir -p "$mod" "$out"
  printf 'module kti.local/etcd-wrapper\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
  printf '//go:build tools\npackage tools\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
  say "tools/etcd $ETCD_VERSION: go build (wrapper module)"
  (cd "$mod" && "$GO_BIN" mod tidy >/dev/null 2>&1 && \
    "$GO_BIN" build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3) \
    || die "etcd build failed"
  local v
  v=$("$out/etcd" --version) || die "built etcd does not run"
  say "tools/etcd: ${v%%$'\n'*}"
}

build_pause() {
  local out src
  out=$(tools_dir "pause-$PAUSE_VERSION")
  if [ -x "$out/pause" ]; then say "tools/pause $PAUSE_VERSION: cached"; return 0; fi
  mkdir -p "$out"
  src=$(cd /tmp && "$GO_BIN" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .Dir)/build/pause/linux/pause.c
  [ -f "$src" ] || die "pause.c not found in the k8s.io/kubernetes module ($src)"
  command -v gcc >/dev/null && [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || {
    say "tools/pause: installing gcc libc6-dev"; apt-get update -qq; apt-get install -y -qq gcc libc6-dev >/dev/null; }
  # Upstream builds it the same way: static, with VERSION defined.
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-kti" -o "$out/pause" "$src"
  strip "$out/pause"
}

step_tools() {
  go_env
  mkdir -p "$KTI_LAB_CACHE/tools"
  build_pause
  go_install_cached coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION"
  go_install_cached local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
    "github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION"
  build_etcd
}
