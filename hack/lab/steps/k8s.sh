# Step "k8s": Kubernetes server/client binaries from the Go module proxy via a wrapper module.
# Output: $KTI_LAB_CACHE/k8s/$K8S_VERSION/bin/{kubeadm,kubelet,kubectl,kube-apiserver,
#         kube-controller-manager,kube-scheduler,kube-proxy} + crictl (crictl-lite, ours)
# shellcheck shell=bash
K8S_CMDS="kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy"

step_k8s_key() {
  short_hash "$K8S_VERSION" "$K8S_CMDS" "$($GO_BIN env GOVERSION)" \
    "$(file_hash "$LAB_DIR/steps/k8s.sh" "$LAB_DIR/files/crictl-lite/main.go")"
}

step_k8s() {
  go_env
  local out="$KTI_LAB_CACHE/k8s/$K8S_VERSION" key
  key=$(step_k8s_key)
  if [ -f "$out/.done" ] && [ "$(cat "$out/.done")" = "$key" ]; then
    say "k8s $K8S_VERSION: cached ($out/bin)"; return 0
  fi
  local mod="$KTI_LAB_CACHE/k8s/wrapper-$K8S_VERSION"
  local minor=${K8S_VERSION#v1.} ; local staging_ver="v0.${minor}"
  rm -rf "$mod" && mkdir -p "$mod" "$out/bin"
  say "k8s $K8S_VERSION: downloading k8s.io/kubernetes module"
  local kdir
  kdir=$(cd "$mod" && "$GO_BIN" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .Dir)
  [ -d "$kdir" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION failed"
  # The staging modules are the ones k8s.io/kubernetes replaces with ./staging/...
  local staging
  staging=$(awk '$2=="=>" && $3 ~ /^\.\/staging\// {print $1}' "$kdir/go.mod")
  [ -n "$staging" ] || die "no staging replace directives found in $kdir/go.mod"
  {
    echo "module kti.local/k8s-wrapper"
    echo
    grep -E '^go [0-9]' "$kdir/go.mod"
    grep -E '^godebug ' "$kdir/go.mod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do echo "	$m => $m $staging_ver"; done
    echo ")"
  } >"$mod/go.mod"
  # tools.go-like file so `go mod tidy` keeps the commands' dependencies.
  {
    echo "//go:build tools"
    echo "package tools"
    echo "import ("
    for c in $K8S_CMDS; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
  } >"$mod/tools.go"
  # crictl-lite (files/crictl-lite) is built in the same module: it uses k8s.io/cri-client.
  mkdir -p "$mod/cmd/crictl" && cp "$LAB_DIR/files/crictl-lite/main.go" "$mod/cmd/crictl/"
  say "k8s: resolving dependencies (go mod tidy)"
  (cd "$mod" && "$GO_BIN" mod tidy -e >"$mod/tidy.log" 2>&1) || { tail -20 "$mod/tidy.log" >&2; die "go mod tidy failed"; }
  local major=1 minorn gitcommit date
  minorn=$(echo "$K8S_VERSION" | cut -d. -f2)
  gitcommit=$(cd "$mod" && "$GO_BIN" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r '.Origin.Hash // empty')
  # buildDate: the release commit's time (reproducible, like SOURCE_DATE_EPOCH upstream).
  date=$(cd "$mod" && "$GO_BIN" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | jq -r .Info | xargs jq -r .Time)
  date=$(date -u -d "$date" +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minorn"
    ld="$ld -X $p.gitCommit=${gitcommit:-unknown} -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  local pkgs=""
  for c in $K8S_CMDS; do pkgs="$pkgs k8s.io/kubernetes/cmd/$c"; done
  say "k8s: go build $K8S_CMDS (long: 30-60 min cold on 2 cores)"
  # shellcheck disable=SC2086
  (cd "$mod" && "$GO_BIN" build -trimpath -tags selinux,notest -ldflags "$ld" -o "$out/bin/" $pkgs) \
    || die "go build of Kubernetes failed"
  say "k8s: go build crictl-lite"
  (cd "$mod" && "$GO_BIN" build -trimpath -ldflags "-s -w" -o "$out/bin/crictl" ./cmd/crictl) \
    || die "go build of crictl-lite failed"
  "$out/bin/kubeadm" version -o short | grep -qx "$K8S_VERSION" || die "kubeadm is not stamped $K8S_VERSION: $("$out/bin/kubeadm" version -o short)"
  echo "$key" >"$out/.done"
  say "k8s: built $(ls "$out/bin" | tr '\n' ' ')"
}
