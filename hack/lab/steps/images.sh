# Step "images": the component images kubeadm and the node's manifests reference, built
# locally from the binaries of the k8s/tools steps (no registry), tagged with the exact names
# `kubeadm config images list` prints, and saved as one tarball for the node step.
# Output: docker images + $KTI_LAB_CACHE/images/images-<key>.tar + images-<key>.list
# shellcheck shell=bash

KINDNET_LITE_IMAGE=docker.io/kti-lab/kindnet-lite:v1

images_key() {
  short_hash "$K8S_VERSION" "$ETCD_VERSION" "$COREDNS_VERSION" "$PAUSE_VERSION" \
    "$LOCAL_PATH_PROVISIONER_VERSION" "$(rootfs_key "$SLIM_PACKAGES")" \
    "$(file_hash "$LAB_DIR/steps/images.sh" "$LAB_DIR/files/iptables-wrapper" "$LAB_DIR/files/kindnet-lite")"
}

# The component image list, one "NAME" per line (kubeadm's list + the node's add-ons).
images_list() {
  "$KTI_LAB_CACHE/k8s/$K8S_VERSION/bin/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null
  echo "$KINDNET_LITE_IMAGE"
  echo "$LOCAL_PATH_PROVISIONER_IMAGE"
  echo "$LOCAL_PATH_HELPER_IMAGE"
}

# docker_build TAG CONTEXT_DIR DOCKERFILE_TEXT
docker_build() {
  local tag=$1 ctx=$2
  printf '%s\n' "$3" >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null 2>"$ctx/build.err" \
    || { cat "$ctx/build.err" >&2; die "docker build $tag failed"; }
  say "images: built $tag"
}

step_images() {
  local key out work kbin tools slim
  key=$(images_key)
  out="$KTI_LAB_CACHE/images"
  mkdir -p "$out"
  if [ -s "$out/images-$key.tar" ] && [ -s "$out/images-$key.list" ]; then
    say "images: cached $out/images-$key.tar"; return 0
  fi
  kbin="$KTI_LAB_CACHE/k8s/$K8S_VERSION/bin"
  tools="$KTI_LAB_CACHE/tools"
  slim=$(base_image_ref slim "$SLIM_PACKAGES")
  [ -x "$kbin/kubeadm" ] || die "Kubernetes binaries missing: run hack/lab/build k8s"
  [ -x "$tools/etcd-$ETCD_VERSION/etcd" ] || die "tools missing: run hack/lab/build tools"
  docker image inspect "$slim" >/dev/null 2>&1 || die "$slim missing: run hack/lab/build base"
  work=$(mktemp -d "$out/.work.XXXX")

  # Static base: just what distroless/static gives (users, CA certs, /tmp).
  mkdir -p "$work/static/etc/ssl/certs" "$work/static/tmp"
  chmod 1777 "$work/static/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/static/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$work/static/etc/group"
  echo 'hosts: files dns' >"$work/static/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$work/static/etc/ssl/certs/" 2>/dev/null \
    || tar -xOf "$(rootfs_tar slim "$SLIM_PACKAGES")" ./etc/ssl/certs/ca-certificates.crt >"$work/static/etc/ssl/certs/ca-certificates.crt"
  docker_build kti-lab/static:v1 "$work/static" 'FROM scratch
COPY etc /etc
COPY tmp /tmp
ENV PATH=/usr/local/bin:/usr/bin:/bin'

  local name bin img tool
  while read -r img; do
    name=${img##*/}; name=${name%%:*}
    mkdir -p "$work/$name"
    case "$name" in
      kube-apiserver|kube-controller-manager|kube-scheduler)
        cp "$kbin/$name" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM kti-lab/static:v1
COPY $name /usr/local/bin/$name
ENTRYPOINT [\"/usr/local/bin/$name\"]" ;;
      kube-proxy)
        cp "$kbin/kube-proxy" "$LAB_DIR/files/iptables-wrapper" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM $slim
COPY kube-proxy /usr/local/bin/kube-proxy
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for t in iptables ip6tables; do for s in '' -save -restore; do ln -sf iptables-wrapper /usr/sbin/\$t\$s; done; done
ENTRYPOINT [\"/usr/local/bin/kube-proxy\"]" ;;
      etcd)
        cp "$tools/etcd-$ETCD_VERSION/etcd" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM kti-lab/static:v1
COPY etcd /usr/local/bin/etcd
CMD [\"/usr/local/bin/etcd\"]" ;;
      coredns)
        cp "$tools/coredns-$COREDNS_VERSION/coredns" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM kti-lab/static:v1
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT [\"/coredns\"]" ;;
      pause)
        cp "$tools/pause-$PAUSE_VERSION/pause" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT [\"/pause\"]" ;;
      kindnet-lite)
        cp "$kbin/kubectl" "$LAB_DIR/files/iptables-wrapper" "$LAB_DIR/files/kindnet-lite" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM $slim
COPY kubectl /usr/local/bin/kubectl
COPY kindnet-lite /usr/local/bin/kindnet-lite
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for t in iptables ip6tables; do for s in '' -save -restore; do ln -sf iptables-wrapper /usr/sbin/\$t\$s; done; done
ENTRYPOINT [\"/usr/local/bin/kindnet-lite\"]" ;;
      local-path-provisioner)
        cp "$tools/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION/local-path-provisioner" "$work/$name/"
        docker_build "$img" "$work/$name" "FROM kti-lab/static:v1
COPY local-path-provisioner /usr/local/bin/local-path-provisioner
ENTRYPOINT [\"/usr/local/bin/local-path-provisioner\"]" ;;
      local-path-helper)
        mkdir -p "$work/$name/bin"
        bin=$(command -v busybox || echo /bin/busybox)
        if [ ! -x "$bin" ] || ldd "$bin" >/dev/null 2>&1; then  # ldd fails on static binaries
          say "images: installing busybox-static"
          apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null || die "a static busybox is needed (apt-get install busybox-static)"
          bin=/bin/busybox
        fi
        cp "$bin" "$work/$name/bin/busybox"
        for tool in sh mkdir rm ls cat; do ln -s busybox "$work/$name/bin/$tool"; done
        docker_build "$img" "$work/$name" "FROM kti-lab/static:v1
COPY bin /bin" ;;
      *) die "no recipe for image $img" ;;
    esac
  done < <(images_list)

  images_list >"$work/list"
  say "images: saving $(wc -l <"$work/list") images"
  # shellcheck disable=SC2046
  docker save $(cat "$work/list") -o "$out/images-$key.tar.tmp"
  mv "$out/images-$key.tar.tmp" "$out/images-$key.tar"
  mv "$work/list" "$out/images-$key.list"
  rm -rf "$work"
  say "images: $(du -h "$out/images-$key.tar" | cut -f1) $out/images-$key.tar"
}
