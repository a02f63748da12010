#!/usr/bin/env bash
# Register SuperNode public keys with a running SuperLink (started with --enable-supernode-auth).
#
#   docker/certs/register.sh <connection> [KEY.pub | OUT_DIR]...
#
# <connection> is a [superlink.<connection>] entry of $FLWR_HOME/config.toml (default ~/.flwr)
# whose address reaches the SuperLink and whose root-certificates points at the CA (ca.crt),
# for example:
#
#   [superlink.fedbuff-docker]
#   address = "127.0.0.1:8000"
#   root-certificates = "/abs/path/to/docker/certs/out/ca.crt"
#
# With no key arguments, every *.pub in docker/certs/out/public is registered. A key the SuperLink
# already knows is reported and skipped, so re-running after adding nodes is safe.
# Each node is registered under the name of its key file (node-0, ...).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ? 2 : 0 ))
fi
connection="$1"
shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -gt 0 ] || set -- "$here/out/public"

keys=()
for arg in "$@"; do
    if [ -d "$arg" ]; then
        for key in "$arg"/*.pub; do
            [ -e "$key" ] && keys+=("$key")
        done
    else
        keys+=("$arg")
    fi
done
[ ${#keys[@]} -gt 0 ] || { echo "register.sh: no *.pub keys found in $*" >&2; exit 1; }

flwr="${FLWR:-flwr}"
failed=0
for key in "${keys[@]}"; do
    name="$(basename "$key" .pub)"
    if output="$("$flwr" supernode register "$key" "$connection" --name "$name" 2>&1)"; then
        echo "registered $name ($key)"
    elif grep -qi "already" <<<"$output"; then
        echo "already registered: $name ($key)"
    else
        echo "failed to register $name ($key):" >&2
        echo "$output" >&2
        failed=1
    fi
done
exit "$failed"
