# kti-lab/static:v1, the lab's tiny base for static binaries (what distroless/static gives:
# users, CA certs, /tmp). step_images builds it with the same recipe inline; this copy lets the
# registry image (steps/registry.sh) rebuild it on an engine that lacks it (e.g. the lab came
# from cached tarballs) without changing images.sh, whose hash keys the node image. Fold the two
# together the next time images.sh changes for another reason.
# shellcheck shell=bash
STATIC_BASE_IMAGE=kti-lab/static:v1

ensure_static_base_image() { # WORKDIR
  docker image inspect "$STATIC_BASE_IMAGE" >/dev/null 2>&1 && return 0
  local work=$1
  mkdir -p "$work/static/etc/ssl/certs" "$work/static/tmp"
  chmod 1777 "$work/static/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/static/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$work/static/etc/group"
  echo 'hosts: files dns' >"$work/static/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$work/static/etc/ssl/certs/" 2>/dev/null \
    || tar -xOf "$(rootfs_tar slim "$SLIM_PACKAGES")" ./etc/ssl/certs/ca-certificates.crt >"$work/static/etc/ssl/certs/ca-certificates.crt" \
    || die "no CA bundle for $STATIC_BASE_IMAGE: neither /etc/ssl/certs/ca-certificates.crt nor the slim rootfs (hack/lab/build base)"
  docker_build "$STATIC_BASE_IMAGE" "$work/static" 'FROM scratch
COPY etc /etc
COPY tmp /tmp
ENV PATH=/usr/local/bin:/usr/bin:/bin'
}
