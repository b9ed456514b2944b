# Step "node": the Kind node image kti-lab/node:<k8s>-<hash of inputs>, built like kind's
# own base + node images but offline: kind's images/base/files (from the kind module) on the
# debootstrap rootfs, Debian's containerd/runc/CNI plugins, our Kubernetes binaries, and every
# component image preloaded into containerd (namespace k8s.io).
# Output: docker image, $KTI_LAB_CACHE/node/<tag>.tar (docker save), $KTI_LAB_CACHE/node-image.ref
# shellcheck shell=bash

# Where the wrapper comes from (engine installs it; the shared copy is the source).
capfix_wrapper_src() {
  local c
  for c in "${KTI_RUNC_WRAPPER:-}" /usr/local/libexec/kti/runc-drop-sys-resource "$LAB_DIR/../../../shared/lab/runc-drop-sys-resource"; do
    [ -n "$c" ] && [ -f "$c" ] && { printf '%s\n' "$c"; return 0; }
  done
  die "runc-drop-sys-resource not found (set KTI_RUNC_WRAPPER)"
}

node_key() {
  short_hash "$KIND_VERSION" "$(step_k8s_key)" "$(images_key)" "$(rootfs_key "$NODE_PACKAGES")" \
    "$(file_hash "$LAB_DIR/steps/node.sh" "$LAB_DIR/files/runc-capfix" "$LAB_DIR/files/default-cni.yaml" "$LAB_DIR/files/kubelet-cgroup-v1.sh" "$(capfix_wrapper_src)")"
}
node_ref() { printf 'kti-lab/node:%s-%s\n' "$K8S_VERSION" "$(node_key)"; }
node_tar() { local r; r=$(node_ref); printf '%s\n' "$KTI_LAB_CACHE/node/${r##*:}.tar"; }

step_node() {
  go_env
  local ref tar key
  ref=$(node_ref); tar=$(node_tar)
  if [ -s "$tar" ]; then
    docker image inspect "$ref" >/dev/null 2>&1 || { say "node: docker load $tar"; docker load -i "$tar" >/dev/null; }
    echo "$ref" >"$(node_ref_file)"
    say "node: cached $ref ($tar)"; return 0
  fi
  local kind_dir kbin base imgkey work cid
  kind_dir=$(kind_src_dir)
  [ -d "$kind_dir/images/base/files" ] || die "kind module source not found ($kind_dir)"
  kbin="$KTI_LAB_CACHE/k8s/$K8S_VERSION/bin"
  base=$(base_image_ref node "$NODE_PACKAGES")
  imgkey=$(images_key)
  [ -s "$KTI_LAB_CACHE/images/images-$imgkey.tar" ] || die "component images missing: run hack/lab/build images"
  docker image inspect "$base" >/dev/null 2>&1 || die "$base missing: run hack/lab/build base"
  mkdir -p "$KTI_LAB_CACHE/node"
  work=$(mktemp -d "$KTI_LAB_CACHE/node/.work.XXXX")

  # --- build context -------------------------------------------------------------------
  cp -a "$kind_dir/images/base/files" "$work/files"
  chmod -R u+w "$work/files"
  rm -rf "$work/files/LICENSES" "$work/files/etc/systemd/system/containerd-fuse-overlayfs.service"
  local cfg="$work/files/etc/containerd/config.toml"
  # Drop the fuse-overlayfs proxy plugin (rootless only; its binary is not in Debian) and
  # run runc through the capability wrapper (see files/runc-capfix).
  awk '
    /^\[proxy_plugins/ {skip=1; next}
    /^\[/ {skip=0}
    skip {next}
    {print}
    /^  \[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.(runc|test-handler).options\]/ {
      print "    BinaryName = \"/usr/local/sbin/runc-capfix\""
    }' "$cfg" >"$cfg.new" && mv "$cfg.new" "$cfg"
  grep -q 'BinaryName' "$cfg" || die "could not add BinaryName to containerd config"
  # Clamp pod oom_score_adj to containerd's own. Without CAP_SYS_RESOURCE nothing here may lower
  # oom_score_adj, and every static pod sandbox (-998) failed with:
  #   nsexec: failed to update /proc/self/oom_score_adj: Permission denied
  #   runc create failed: unable to start container process: can't get final child's PID from pipe: EOF
  # On a normal node containerd runs at -999, so the clamp changes nothing there.
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$cfg"
  grep -q 'restrict_oom_score_adj = true' "$cfg" || die "could not set restrict_oom_score_adj in containerd config"
  mkdir -p "$work/files/kind/bin" "$work/files/etc/systemd/system/kubelet.service.d"
  cp "$LAB_DIR/files/kubelet-cgroup-v1.sh" "$work/files/kind/bin/kti-kubelet-cgroup-v1.sh"
  printf '[Service]\nExecStartPre=/kind/bin/kti-kubelet-cgroup-v1.sh\n' \
    >"$work/files/etc/systemd/system/kubelet.service.d/12-kti-cgroup-v1.conf"
  cp "$kbin/kubeadm" "$kbin/kubelet" "$kbin/kubectl" "$kbin/crictl" "$work/"
  cp "$(capfix_wrapper_src)" "$work/runc-drop-sys-resource"
  cp "$LAB_DIR/files/runc-capfix" "$work/"
  mkdir -p "$work/manifests"
  local kindnet
  kindnet=$(grep kindnet-lite "$KTI_LAB_CACHE/images/images-$imgkey.list")
  sed "s|__KINDNET_IMAGE__|$kindnet|" "$LAB_DIR/files/default-cni.yaml" >"$work/manifests/default-cni.yaml"
  # default-storage.yaml: kind's own manifest (Go constant in pkg/build/nodeimage/const_storage.go).
  awk -v p="$LOCAL_PATH_PROVISIONER_IMAGE" -v h="$LOCAL_PATH_HELPER_IMAGE" '
    /^const defaultStorageManifest = `/ {on=1; next}
    on && /^`$/ {on=0}
    on { gsub(/` \+ storageProvisionerImage \+ `/, p); gsub(/` \+ storageHelperImage \+ `/, h); print }
  ' "$kind_dir/pkg/build/nodeimage/const_storage.go" >"$work/manifests/default-storage.yaml"
  grep -q "$LOCAL_PATH_PROVISIONER_IMAGE" "$work/manifests/default-storage.yaml" || die "could not extract kind's storage manifest"
  echo "$K8S_VERSION" >"$work/version"
  cat >"$work/Dockerfile" <<DOCKERFILE
FROM $base
COPY files/ /
COPY kubeadm kubelet kubectl /usr/bin/
COPY crictl /usr/local/bin/crictl
COPY runc-drop-sys-resource runc-capfix /usr/local/sbin/
COPY manifests/ /kind/manifests/
COPY version /kind/version
RUN set -e; chmod 0755 /usr/local/bin/* /kind/bin/* /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/local/sbin/*; \
  for b in containerd ctr containerd-shim-runc-v2 containerd-shim; do \
    [ -e /usr/bin/\$b ] && ln -sf /usr/bin/\$b /usr/local/bin/\$b; done; \
  mkdir -p /opt/cni/bin && for p in /usr/lib/cni/*; do ln -sf \$p /opt/cni/bin/; done; \
  ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json; \
  find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete; \
  rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
    /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
    /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
  echo "ReadKMsg=no" >> /etc/systemd/journald.conf; \
  ln -sf /lib/systemd/systemd /sbin/init; \
  systemctl enable kubelet.service containerd.service undo-mount-hacks.service; \
  systemctl mask systemd-binfmt.service; \
  mkdir -p /etc/kubernetes/manifests; \
  kubeadm version -o short; containerd --version; runc --version | head -1
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
DOCKERFILE
  local stage="kti-lab/node-stage:$(node_key)"
  say "node: docker build $stage"
  DOCKER_BUILDKIT=0 docker build -q -t "$stage" "$work" >/dev/null 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; die "node image build failed"; }

  # --- preload images into the node's containerd ---------------------------------------
  cid=$(docker run -d --privileged --security-opt seccomp=unconfined --entrypoint=sleep \
        --name "kti-lab-nodebuild-$$" "$stage" infinity)
  trap 'docker rm -f -v "kti-lab-nodebuild-$$" >/dev/null 2>&1 || true' RETURN
  docker exec -d "$cid" sh -c 'containerd >/var/log/containerd-build.log 2>&1'
  local i
  for i in $(seq 1 30); do docker exec "$cid" ctr version >/dev/null 2>&1 && break; sleep 1; done
  docker exec "$cid" ctr version >/dev/null 2>&1 || { docker exec "$cid" cat /var/log/containerd-build.log >&2; die "containerd did not start in the build container"; }
  say "node: importing $(wc -l <"$KTI_LAB_CACHE/images/images-$imgkey.list") images into containerd (k8s.io)"
  docker exec -i "$cid" ctr -n k8s.io images import --all-platforms --no-unpack - \
    <"$KTI_LAB_CACHE/images/images-$imgkey.tar" >"$work/import.log" 2>&1 \
    || { cat "$work/import.log" >&2; die "ctr images import failed"; }
  # Pin them (as kind does) so the kubelet's image GC never removes them.
  docker exec "$cid" sh -c 'for i in $(ctr -n k8s.io images ls -q); do ctr -n k8s.io images label "$i" io.cri-containerd.pinned=pinned >/dev/null; done'
  # Every image kubeadm asks for must be present under exactly that name.
  local want have missing=""
  have=$(docker exec "$cid" ctr -n k8s.io images ls -q)
  want=$( ( docker exec "$cid" kubeadm config images list --kubernetes-version "$K8S_VERSION"; cat "$KTI_LAB_CACHE/images/images-$imgkey.list" ) | sort -u)
  for i in $want; do
    printf '%s\n' "$have" | grep -qxF "$i" || printf '%s\n' "$have" | grep -qxF "docker.io/library/$i" || missing="$missing $i"
  done
  [ -z "$missing" ] || die "images missing from the node's containerd:$missing (have: $(echo $have))"
  docker exec "$cid" sh -c 'kill $(pidof containerd); for i in $(seq 1 20); do pidof containerd >/dev/null || exit 0; sleep 0.5; done; exit 1' \
    || die "containerd did not stop in the build container"
  docker exec "$cid" rm -f /var/log/containerd-build.log
  docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' --change 'CMD []' \
    "$cid" "$ref" >/dev/null
  docker rm -f -v "$cid" >/dev/null
  docker rmi "$stage" >/dev/null 2>&1 || true
  say "node: committed $ref; saving $tar"
  docker save "$ref" -o "$tar.tmp" && mv "$tar.tmp" "$tar"
  echo "$ref" >"$(node_ref_file)"
  rm -rf "$work"
  say "node: $ref ($(du -h "$tar" | cut -f1) tarball)"
}
