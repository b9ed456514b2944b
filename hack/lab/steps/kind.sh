# Step "kind": the kind CLI, `go install sigs.k8s.io/kind@$KIND_VERSION`, plus kind's own
# module source (images/base/files are copied into the node image by the node step).
# Output: $KTI_LAB_CACHE/bin/kind-$KIND_VERSION
# shellcheck shell=bash
step_kind() {
  go_env
  local bin
  bin=$(kind_bin)
  if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "kind $KIND_VERSION "; then
    say "kind $KIND_VERSION: cached ($bin)"; return 0
  fi
  mkdir -p "$KTI_LAB_CACHE/bin"
  local gobin="$KTI_LAB_CACHE/bin/.gobin-kind"
  rm -rf "$gobin"
  GOBIN="$gobin" "$GO_BIN" install "sigs.k8s.io/kind@$KIND_VERSION"
  mv "$gobin/kind" "$bin" && rm -rf "$gobin"
  say "kind: $("$bin" version)"
}

# Directory of kind's module source (downloaded into GOMODCACHE).
kind_src_dir() {
  go_env
  "$GO_BIN" mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir
}
