#!/usr/bin/env bash
# Make the images' base without an image registry: Debian bookworm with Python 3.11, from the
# Debian mirror this host uses, as a local podman image (the Dockerfile's PYTHON_IMAGE and
# DEBIAN_IMAGE build args).
#
#   docker/base-image.sh [--tag TAG] [--cache DIR] [--sources FILE]
#
# mmdebstrap builds a minimal root file system with python3, pip and the few tools the images
# use (useradd, CA certificates); `podman import` turns it into an image. The tarball is kept in
# the cache folder (default $XDG_CACHE_HOME/fedbuff-deploy, else ~/.cache/fedbuff-deploy), so a
# later call on this machine only imports it (seconds); an image that exists already is kept.
# Debian's Python is "externally managed" (PEP 668): the marker is removed, as in the
# python:3.11-slim images, so that the Dockerfile's `pip install` works unchanged.
# Needs root (mmdebstrap --mode=root), mmdebstrap and podman.
set -euo pipefail

tag="localhost/fedbuff-python:3.11-bookworm"
cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/fedbuff-deploy"
sources=""  # default: this host's Debian sources (deb822 or one-line), else deb.debian.org
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -z "$sources" ] && [ -s "$candidate" ]; then sources="$candidate"; fi
done
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --cache) cache="$2"; shift 2 ;;
        --sources) sources="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "base-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "base-image.sh: '$tool' is not installed" >&2; exit 1; }
done

if podman image exists "$tag"; then
    echo "base-image.sh: $tag exists"
    exit 0
fi
packages=python3,python3-pip,python-is-python3,ca-certificates,passwd
tarball="$cache/bookworm-python3.11-$(echo "$packages" | sha256sum | cut -c1-12).tar"
if [ ! -s "$tarball" ]; then
    [ -z "$sources" ] || [ -r "$sources" ] || { echo "base-image.sh: cannot read $sources" >&2; exit 1; }
    mkdir -p "$cache"
    echo "base-image.sh: mmdebstrap bookworm ($packages, from ${sources:-deb.debian.org}) -> $tarball"
    mirror=()
    [ -z "$sources" ] || mirror=("$sources")
    mmdebstrap --variant=minbase --mode=root --include="$packages" \
        --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
        --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
        bookworm "${tarball%.tar}.partial.tar" "${mirror[@]}"  # the format follows the name: .tar
    mv "${tarball%.tar}.partial.tar" "$tarball"
fi
podman import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "base-image.sh: imported $tag"
