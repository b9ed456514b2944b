# Step "registry": the distribution registry (github.com/distribution/distribution/v3,
# cmd/registry) from the Go module proxy (its go.mod has no replace directives: plain
# `go install`), stamped like upstream's Dockerfile, plus a tiny image for it
# (FROM kti-lab/static:v1, steps/static.sh) that hack/lab/registry runs.
# Output: $KTI_LAB_CACHE/bin/registry-$REGISTRY_VERSION (+ .key), docker image registry_image_ref
# shellcheck shell=bash

registry_bin() { printf '%s\n' "$KTI_LAB_CACHE/bin/registry-$REGISTRY_VERSION"; }

# Keyed by the version, the Go toolchain and the text of the build function itself (so editing
# the image or start logic below does not rebuild the binary).
step_registry_key() {
  short_hash "$REGISTRY_VERSION" "$("$GO_BIN" env GOVERSION)" "$(declare -f build_registry_bin)"
}

# The image is keyed by the binary's key, the config, its own recipe and the static base's.
registry_image_ref() {
  printf 'kti-lab/registry:%s-%s\n' "$REGISTRY_VERSION" \
    "$(short_hash "$(step_registry_key)" "$(file_hash "$LAB_DIR/files/registry-config.yml" "$LAB_DIR/steps/static.sh")" \
       "$(declare -f ensure_registry_image)")"
}

build_registry_bin() {
  go_env
  local bin key
  bin=$(registry_bin); key=$(step_registry_key)
  if [ -x "$bin" ] && [ "$(cat "$bin.key" 2>/dev/null)" = "$key" ]; then
    say "registry $REGISTRY_VERSION: cached ($bin)"; return 0
  fi
  local mod="github.com/distribution/distribution/v3" gobin ld
  # Upstream's Dockerfile: -X version.version=<tag without v> -X version.revision -X version.mainpkg.
  ld="-s -w -X $mod/version.version=${REGISTRY_VERSION#v} -X $mod/version.mainpkg=$mod"
  mkdir -p "$KTI_LAB_CACHE/bin"
  gobin="$KTI_LAB_CACHE/bin/.gobin-registry"
  rm -rf "$gobin"
  say "registry $REGISTRY_VERSION: go install $mod/cmd/registry"
  (cd /tmp && GOBIN="$gobin" "$GO_BIN" install -trimpath -ldflags "$ld" "$mod/cmd/registry@$REGISTRY_VERSION") \
    || die "go install $mod/cmd/registry@$REGISTRY_VERSION failed"
  local got
  got=$("$gobin/registry" --version) || die "the built registry does not run"
  [[ "$got" == *" ${REGISTRY_VERSION#v}"* ]] || die "the built registry reports '$got', not ${REGISTRY_VERSION#v}"
  mv "$gobin/registry" "$bin" && rm -rf "$gobin"
  echo "$key" >"$bin.key"
  say "registry: $("$bin" --version)"
}

# ensure_registry_image: build the image from the cached binary when the engine lacks it.
ensure_registry_image() {
  local ref work
  ref=$(registry_image_ref)
  if docker image inspect "$ref" >/dev/null 2>&1; then say "registry image: present ($ref)"; return 0; fi
  [ -x "$(registry_bin)" ] || die "$(registry_bin) missing: run hack/lab/build registry"
  mkdir -p "$KTI_LAB_CACHE/bin"
  work=$(mktemp -d "$KTI_LAB_CACHE/bin/.registry-image.XXXX")
  ensure_static_base_image "$work"
  mkdir -p "$work/ctx/var/lib/registry"
  cp "$(registry_bin)" "$work/ctx/registry"
  cp "$LAB_DIR/files/registry-config.yml" "$work/ctx/config.yml"
  # Runs as nonroot (65532); the storage directory is created owned by it, so a fresh named
  # volume mounted there inherits that owner.
  docker_build "$ref" "$work/ctx" "FROM $STATIC_BASE_IMAGE
COPY registry /usr/local/bin/registry
COPY config.yml /etc/distribution/config.yml
COPY --chown=65532:65532 var/lib/registry /var/lib/registry
USER 65532:65532
VOLUME [\"/var/lib/registry\"]
EXPOSE 5000
ENTRYPOINT [\"/usr/local/bin/registry\"]
CMD [\"serve\", \"/etc/distribution/config.yml\"]"
  rm -rf "$work"
  # Older registry images no container uses are dead weight (docker refuses the ones in use).
  local img
  for img in $(docker images kti-lab/registry --format '{{.Repository}}:{{.Tag}}'); do
    [ "$img" = "$ref" ] && continue
    if docker rmi "$img" >/dev/null 2>&1; then say "registry image: removed old $img"; fi
  done
}

step_registry() {
  build_registry_bin
  if docker info >/dev/null 2>&1; then
    ensure_registry_image
  else
    say "registry image: no Docker engine answers; hack/lab/registry start builds it later"
  fi
}
