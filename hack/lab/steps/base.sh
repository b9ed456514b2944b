# Step "base": debootstrap root filesystems, cached as tarballs keyed by their package lists.
#  - node: systemd + containerd + runc + CNI plugins + iptables/nft + tools (Kind node image base)
#  - slim: minbase + iptables/nft/conntrack (base of the kube-proxy and kindnetd images)
# Output: $KTI_LAB_CACHE/rootfs/<name>-<suite>-<hash>.tar, and docker images
#         kti-lab/base-<name>:<suite>-<hash> imported from them.
# shellcheck shell=bash
NODE_PACKAGES="systemd systemd-sysv dbus containerd runc containernetworking-plugins iptables nftables
 conntrack socat iproute2 ethtool util-linux mount kmod libseccomp2 pigz bash ca-certificates curl jq
 procps ebtables ipset ipvsadm e2fsprogs findutils less"
SLIM_PACKAGES="iptables nftables conntrack ipset iproute2 ca-certificates"
# Bump when the way a rootfs is made (not its package list) changes.
ROOTFS_RECIPE=1

rootfs_key() { short_hash "$DEBIAN_SUITE" "$1" "$ROOTFS_RECIPE"; }
rootfs_tar() { printf '%s\n' "$KTI_LAB_CACHE/rootfs/$1-$DEBIAN_SUITE-$(rootfs_key "$2").tar"; }
base_image_ref() { printf 'kti-lab/base-%s:%s-%s\n' "$1" "$DEBIAN_SUITE" "$(rootfs_key "$2")"; }

build_rootfs() { # NAME "PACKAGES"
  local name=$1 pkgs=$2 tar mirror dir
  tar=$(rootfs_tar "$name" "$pkgs")
  if [ ! -s "$tar" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
    mirror=$(apt_mirror)
    local attempt
    for attempt in 1 2; do
      dir=$(mktemp -d "$KTI_LAB_CACHE/rootfs/.build-$name.XXXX")
      say "base/$name: debootstrap $DEBIAN_SUITE from $mirror ($(echo $pkgs | wc -w) packages, attempt $attempt)"
      if debootstrap --variant=minbase --include="$(echo $pkgs | tr ' ' ',')" "$DEBIAN_SUITE" "$dir" "$mirror" \
          >"$dir.log" 2>&1; then
        break
      fi
      tail -n 5 "$dir/debootstrap/debootstrap.log" >>"$dir.log" 2>/dev/null || true
      tail -n 30 "$dir.log" >&2
      [ "$attempt" = 1 ] || die "debootstrap failed twice (log $dir.log)"
      say "base/$name: debootstrap failed; retrying once"
      rm -rf "$dir"
    done
    # Trim what images do not need.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
      "$dir"/usr/share/man/* "$dir"/usr/share/locale/* "$dir"/var/log/*.log "$dir"/tmp/*
    tar --numeric-owner -C "$dir" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$dir" "$dir.log"
    say "base/$name: $(du -h "$tar" | cut -f1) $tar"
  else
    say "base/$name: cached $tar"
  fi
  local ref
  ref=$(base_image_ref "$name" "$pkgs")
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/bash"]' "$tar" "$ref" >/dev/null
    say "base/$name: imported $ref"
  fi
}

step_base() {
  mkdir -p "$KTI_LAB_CACHE/rootfs"
  "$LAB_DIR/engine" >/dev/null
  build_rootfs node "$NODE_PACKAGES"
  build_rootfs slim "$SLIM_PACKAGES"
}
