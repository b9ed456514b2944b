# Step "containerd2": containerd and ctr 2.x from the Go module proxy, for the kind tier's test of
# both archive paths (OCI layout, Docker archive) against the containerd kind's own node images run
# (tests/kind/test_load.py; the lab's nodes run Debian's 1.6). containerd's go.mod has replace
# directives, so `go install mod@version` refuses it: a throw-away wrapper module requires it and
# `go build`s its two commands, statically (CGO off; the btrfs/devmapper/zfs snapshotters need cgo).
# Output: $KTI_LAB_CACHE/bin/containerd-$CONTAINERD2_VERSION/{containerd,ctr} (+ .key)
# shellcheck shell=bash

containerd2_dir() { printf '%s\n' "$KTI_LAB_CACHE/bin/containerd-$CONTAINERD2_VERSION"; }

step_containerd2_key() {
  short_hash "$CONTAINERD2_VERSION" "$("$GO_BIN" env GOVERSION)" "$(declare -f step_containerd2)"
}

step_containerd2() {
  go_env
  local dir key
  dir=$(containerd2_dir); key=$(step_containerd2_key)
  if [ -x "$dir/containerd" ] && [ -x "$dir/ctr" ] && [ "$(cat "$dir.key" 2>/dev/null)" = "$key" ]; then
    say "containerd $CONTAINERD2_VERSION: cached ($dir)"; return 0
  fi
  local mod="github.com/containerd/containerd/v2" work
  work=$(mktemp -d "$KTI_LAB_CACHE/bin/.containerd2.XXXX")
  say "containerd $CONTAINERD2_VERSION: go build $mod/cmd/containerd and cmd/ctr (wrapper module $work)"
  (
    cd "$work"
    "$GO_BIN" mod init kti.local/containerd2 >/dev/null 2>&1
    printf 'package tools\n\nimport (\n\t_ "%s/cmd/containerd"\n\t_ "%s/cmd/ctr"\n)\n' "$mod" "$mod" >tools.go
    "$GO_BIN" get "$mod@$CONTAINERD2_VERSION" >/dev/null 2>&1
    "$GO_BIN" mod tidy >/dev/null 2>&1
    ld="-s -w -X $mod/version.Version=$CONTAINERD2_VERSION"
    CGO_ENABLED=0 "$GO_BIN" build -trimpath -tags no_btrfs,no_devmapper,no_zfs -ldflags "$ld" -o "$work/out/" \
      "$mod/cmd/containerd" "$mod/cmd/ctr"
  ) || { rm -rf "$work"; die "building containerd $CONTAINERD2_VERSION from the Go module proxy failed"; }
  local got
  got=$("$work/out/ctr" --version) || { rm -rf "$work"; die "the built ctr does not run"; }
  [[ "$got" == *"$CONTAINERD2_VERSION"* ]] || { rm -rf "$work"; die "the built ctr reports '$got'"; }
  rm -rf "$dir" && mkdir -p "$dir" && mv "$work/out/containerd" "$work/out/ctr" "$dir/" && rm -rf "$work"
  echo "$key" >"$dir.key"
  say "containerd2: $("$dir/containerd" --version)"
}
