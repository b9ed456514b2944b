#!/bin/sh
# ExecStartPre of the kubelet in the lab node image (cgroup v1 hosts only).
# kind's entrypoint creates the /kubelet and /kubelet.slice cgroups only in the hierarchies
# mounted when the container starts. On this VM the host does not mount hugetlb, net_cls,
# net_prio and perf_event, so the node's systemd mounts them later and the kubelet fails:
#   invalid configuration: cgroup ["kubelet"] has some missing paths: /sys/fs/cgroup/hugetlb/kubelet.slice
# Create the two cgroups in every v1 hierarchy that lacks them.
[ -f /sys/fs/cgroup/cgroup.controllers ] && exit 0
for d in /sys/fs/cgroup/*/; do
  d=${d%/}
  [ -L "$d" ] && continue
  for c in kubelet kubelet.slice; do
    [ -d "$d/$c" ] || mkdir -p "$d/$c" 2>/dev/null || true
  done
done
exit 0
