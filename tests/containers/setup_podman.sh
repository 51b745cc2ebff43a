#!/usr/bin/env bash
# Everything `make test-containers` needs on a Debian bookworm machine without a Docker engine and
# without a reachable image registry: podman with runc, and a local Debian base image.
#
# Idempotent: packages already installed, the config already written and a base image already
# built are left as they are, so a second run on the same machine takes seconds.
#   - runc, not crun: crun fails on this machine's hybrid cgroups (v1 controllers, no systemd).
#   - default_ulimits = []: the sandbox refuses the ulimits podman sets by default.
#   - the base: `debootstrap` of bookworm (python3 is 3.11, as in python:3.11-slim-bookworm),
#     imported with `podman import`; the Dockerfiles take it as --build-arg BASE_IMAGE.
set -euo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/spikeserve-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 podman runc debootstrap >/dev/null
fi

conf=/etc/containers/containers.conf
if ! grep -q '^default_ulimits *= *\[\]' "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  if [[ -s "$conf" ]]; then
    echo "$conf exists without default_ulimits = []; add it under [containers]" >&2
    exit 1
  fi
  printf '[containers]\ndefault_ulimits = []\n' >"$conf"
fi

if podman --runtime runc image exists "$BASE_IMAGE"; then
  echo "base image $BASE_IMAGE already built"
  exit 0
fi
echo "building $BASE_IMAGE with debootstrap (bookworm, minbase)"
rootfs="$(mktemp -d /var/tmp/spikeserve-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# what a slim image leaves out: package lists, caches, docs
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
echo "deb $MIRROR bookworm main" >"$rootfs/etc/apt/sources.list"
# pip trusts the system's CA bundle, as this machine's pip does (PIP_CERT): the tests mount the
# host's bundle over it during builds, so a TLS-inspecting proxy that the host trusts works there too
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
tar -C "$rootfs" -c . | podman --runtime runc import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
podman --runtime runc image ls "$BASE_IMAGE"
