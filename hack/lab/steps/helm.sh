# Step "helm": the helm CLI, `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` (its go.mod
# has no replace directives, so no wrapper module is needed), stamped like upstream's Makefile:
# version, tree state and the Kubernetes version helm assumes when it has no cluster
# (`helm template` without --kube-version: .Capabilities.KubeVersion) from the client-go it
# requires. Output: $KTI_LAB_CACHE/bin/helm-$HELM_VERSION (+ .key = inputs of the build)
# shellcheck shell=bash

helm_bin() { printf '%s\n' "$KTI_LAB_CACHE/bin/helm-$HELM_VERSION"; }

# Keyed by the version, the Go toolchain and the text of the build function itself.
step_helm_key() {
  short_hash "$HELM_VERSION" "$("$GO_BIN" env GOVERSION)" "$(declare -f step_helm)"
}

step_helm() {
  go_env
  local bin key
  bin=$(helm_bin); key=$(step_helm_key)
  if [ -x "$bin" ] && [ "$(cat "$bin.key" 2>/dev/null)" = "$key" ]; then
    say "helm $HELM_VERSION: cached ($bin)"; return 0
  fi
  local mod="helm.sh/helm/v3" dir clientgo major minor ld gobin
  dir=$(cd /tmp && "$GO_BIN" mod download -json "$mod@$HELM_VERSION" | jq -r .Dir)
  [ -f "$dir/go.mod" ] || die "go mod download $mod@$HELM_VERSION failed"
  # Upstream: K8S_MODULES_MAJOR_VER = 1 + major of k8s.io/client-go, minor = its minor.
  clientgo=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$dir/go.mod")
  [[ "$clientgo" =~ ^v0\.([0-9]+)\. ]] || die "cannot read the k8s.io/client-go version from $dir/go.mod"
  major=1 minor=${BASH_REMATCH[1]}
  ld="-s -w -X $mod/internal/version.version=$HELM_VERSION -X $mod/internal/version.metadata="
  ld="$ld -X $mod/internal/version.gitTreeState=clean"
  ld="$ld -X $mod/pkg/lint/rules.k8sVersionMajor=$major -X $mod/pkg/lint/rules.k8sVersionMinor=$minor"
  ld="$ld -X $mod/pkg/chartutil.k8sVersionMajor=$major -X $mod/pkg/chartutil.k8sVersionMinor=$minor"
  mkdir -p "$KTI_LAB_CACHE/bin"
  gobin="$KTI_LAB_CACHE/bin/.gobin-helm"
  rm -rf "$gobin"
  say "helm $HELM_VERSION: go install $mod/cmd/helm (client-go $clientgo: default kube version v$major.$minor)"
  (cd /tmp && GOBIN="$gobin" "$GO_BIN" install -trimpath -ldflags "$ld" "$mod/cmd/helm@$HELM_VERSION") \
    || die "go install $mod/cmd/helm@$HELM_VERSION failed"
  local got
  got=$("$gobin/helm" version --template '{{.Version}}') || die "the built helm does not run"
  [ "$got" = "$HELM_VERSION" ] || die "the built helm reports version '$got', not $HELM_VERSION"
  mv "$gobin/helm" "$bin" && rm -rf "$gobin"
  echo "$key" >"$bin.key"
  say "helm: $("$bin" version --short)"
}
