#!/usr/bin/env bash
# Build the images of docker/compose.yml, with this host's pip settings passed as build secrets
# (never kept in an image), and print each image's build time and size.
#
#   docker/build-images.sh [--local-base] [--pip-conf FILE] [--ca-bundle FILE] [--wheels DIR] [TARGET...]
#
#   TARGET         flower, app, mask, prometheus (default: all four)
#   --local-base   no image registry: make the base with docker/base-image.sh (Debian bookworm +
#                  Python 3.11 from this host's Debian mirror) and build every image on it
#   --pip-conf F   a pip.conf for the builds' pip (index-url, extra-index-url, find-links)
#   --ca-bundle F  the CA certificates pip must trust (an intercepting proxy's), e.g.
#                  /etc/ssl/certs/ca-certificates.crt
#   --wheels DIR   a folder of wheels (pip's find-links) mounted read-only into the build steps;
#                  torch==2.13.0 then comes from there or the pip.conf's index (podman only:
#                  `docker build` cannot mount a folder; give a find-links URL in --pip-conf)
#
# ENGINE picks the builder (default: podman if installed, else docker); APP_UID as in compose.yml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
engine="${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}"
local_base=0
pip_conf=""
ca_bundle=""
wheels=""
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --local-base) local_base=1; shift ;;
        --pip-conf) pip_conf="$2"; shift 2 ;;
        --ca-bundle) ca_bundle="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        flower|app|mask|prometheus) targets+=("$1"); shift ;;
        *) echo "build-images.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(flower app mask prometheus)
for file in "$pip_conf" "$ca_bundle"; do
    [ -z "$file" ] || [ -r "$file" ] || { echo "build-images.sh: cannot read $file" >&2; exit 2; }
done
[ -z "$wheels" ] || [ -d "$wheels" ] || { echo "build-images.sh: no folder $wheels" >&2; exit 2; }
if [ -n "$wheels" ] && [ "$engine" != podman ]; then
    echo "build-images.sh: --wheels needs podman (docker build cannot mount a folder)" >&2
    exit 2
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# The build steps use the host's network, as pip and apt on the host do: no container NAT or DNS
# between them and the package registries.
args=(--network host --build-arg "APP_UID=${APP_UID:-1000}")
if [ "$local_base" = 1 ]; then
    base="localhost/fedbuff-python:3.11-bookworm"
    "$here/base-image.sh" --tag "$base"
    args+=(--build-arg "PYTHON_IMAGE=$base" --build-arg "DEBIAN_IMAGE=$base")
fi
if [ -n "$wheels" ]; then
    # the pip.conf given (if any) with the mounted wheels first in find-links; torch from there
    python3 - "$pip_conf" "$scratch/pip.conf" <<'EOF'
import configparser
import sys

config = configparser.RawConfigParser()
if sys.argv[1]:
    config.read(sys.argv[1])
if not config.has_section("global"):
    config.add_section("global")
links = config.get("global", "find-links", fallback="").split()
config.set("global", "find-links", " ".join(["/wheels", *links]))
with open(sys.argv[2], "w", encoding="utf-8") as out:
    config.write(out)
EOF
    pip_conf="$scratch/pip.conf"
    args+=(--volume "$(cd "$wheels" && pwd):/wheels:ro" --build-arg "TORCH_INDEX_URL=")
fi
[ -z "$pip_conf" ] || args+=(--secret "id=pip_conf,src=$pip_conf")
[ -z "$ca_bundle" ] || args+=(--secret "id=ca_bundle,src=$ca_bundle")
if [ "$engine" = docker ]; then
    export DOCKER_BUILDKIT=1  # secrets need BuildKit
fi

for target in "${targets[@]}"; do
    tag="fedbuff-$target:0.1.0"
    started=$SECONDS
    "$engine" build -f "$here/Dockerfile" --target "$target" -t "$tag" "${args[@]}" "$root"
    size="$("$engine" image inspect --format '{{.Size}}' "$tag")"
    printf 'build-images.sh: %s built in %d s, %d MB\n' "$tag" $((SECONDS - started)) $((size / 1000000))
done
