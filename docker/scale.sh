#!/usr/bin/env bash
# Scale the compose deployment to N SuperNodes (each with its own key and flower-superexec).
#
#   docker/scale.sh N [--gpu] [--write-only] [-o OVERRIDE]
#
# With SuperNode authentication every node needs its own registered key, its own partition and its
# own SuperExec, so plain `docker compose up --scale` cannot do it. This script:
#   1. makes sure node keys 0..N-1 exist (docker/certs/generate.sh -n N; existing keys are kept),
#   2. writes docker/compose.scale.yml: nodes 3..N-1 (tiers cycle high, mid, low), and
#      num-partitions=N for every node (nodes >= N are switched off with the profile "scaled-out"),
#   3. runs docker compose -f compose.yml [-f compose.gpu.yml] -f compose.scale.yml up -d for the
#      nodes, which re-runs register-supernodes (new keys are registered, known ones skipped) and
#      starts them; the other services are left as they run.
# --write-only stops after step 2. Later `docker compose` commands need the same -f files.
# COMPOSE names the compose command (default "docker compose"; e.g. COMPOSE="podman compose" or
# COMPOSE=docker-compose).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
override="$here/compose.scale.yml"
gpu=0
write_only=0
nodes=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) gpu=1; shift ;;
        --write-only) write_only=1; shift ;;
        -o|--override) override="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) nodes="$1"; shift ;;
    esac
done
case "$nodes" in ''|*[!0-9]*|0) echo "scale.sh: give the number of SuperNodes (>= 1)" >&2; exit 2 ;; esac

BASE_NODES=3   # supernode-0..2 are defined in compose.yml
tiers=(high mid low)

# Credentials live where compose reads them: $FEDBUFF_CREDENTIALS (relative to docker/) or certs/out.
credentials="${FEDBUFF_CREDENTIALS:-./certs/out}"
case "$credentials" in /*) ;; *) credentials="$here/$credentials" ;; esac
"$here/certs/generate.sh" -o "$credentials" -n "$nodes" >/dev/null

node_config() {  # index -> the --node-config value (as in compose.yml, secure-aggregation keys included)
    printf 'partition-id=%d num-partitions=%d device-tier="%s" secagg-signing-key="/run/secrets/node_key" ' \
        "$1" "$nodes" "${tiers[$(($1 % 3))]}"
    printf 'secagg-service-fingerprint="${FEDBUFF_MASK_FINGERPRINT:-}"'
}

# The flags every SuperNode runs with (as in compose.yml), as the YAML of a service's command.
supernode_command() {  # index -> YAML lines
    cat <<EOF
    command:
      - --superlink=superlink:8000
      - --root-certificates=/run/secrets/ca_crt
      - --auth-supernode-private-key=/run/secrets/node_key
      - --isolation=process
      - --superexec-auth-secret-file=/run/secrets/superexec_supernode_secret
      - --host=0.0.0.0
      - --port=9094
      - '--node-config=$(node_config "$1")'
EOF
}

{
    echo "# Written by docker/scale.sh $nodes$([ "$gpu" = 1 ] && echo " --gpu"): do not edit, re-run the script."
    echo "services:"
    for ((i = 0; i < BASE_NODES; i++)); do
        if ((i < nodes)); then
            cat <<EOF
  supernode-$i:
$(supernode_command "$i")
EOF
        else
            printf '  supernode-%d:\n    profiles: ["scaled-out"]\n' "$i"
            printf '  superexec-clientapp-%d:\n    profiles: ["scaled-out"]\n' "$i"
        fi
    done
    for ((i = BASE_NODES; i < nodes; i++)); do
        cat <<EOF
  supernode-$i:
    image: \${FEDBUFF_FLOWER_IMAGE:-fedbuff-flower:0.1.0}
    build:
      context: ..
      dockerfile: docker/Dockerfile
      target: flower
      args:
        APP_UID: \${APP_UID:-1000}
    restart: unless-stopped
    entrypoint: ["flower-supernode"]
$(supernode_command "$i")
    secrets:
      - ca_crt
      - superexec_supernode_secret
      - {source: node_${i}_key, target: node_key}
    healthcheck:
      test: ["CMD-SHELL", "python -c \\"import urllib.request as u; u.urlopen('http://127.0.0.1:9094/health', timeout=3)\\""]
      interval: 10s
      timeout: 5s
      retries: 3
      start_period: 20s
    depends_on:
      superlink:
        condition: service_healthy
      register-supernodes:
        condition: service_completed_successfully
  superexec-clientapp-$i:
EOF
        if [ "$gpu" = 1 ]; then
            cat <<EOF
    image: \${FEDBUFF_APP_GPU_IMAGE:-fedbuff-app-gpu:0.1.0}
    build:
      context: ..
      dockerfile: docker/Dockerfile
      target: app
      args:
        APP_UID: \${APP_UID:-1000}
        TORCH_INDEX_URL: https://pypi.org/simple
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: all
              capabilities: [gpu]
EOF
        else
            cat <<EOF
    image: \${FEDBUFF_APP_IMAGE:-fedbuff-app:0.1.0}
    build:
      context: ..
      dockerfile: docker/Dockerfile
      target: app
      args:
        APP_UID: \${APP_UID:-1000}
EOF
        fi
        cat <<EOF
    restart: unless-stopped
    entrypoint: ["flower-superexec"]
    command:
      - --runtime-api-address=supernode-$i:9094
      - --insecure
      - --superexec-auth-secret-file=/run/secrets/superexec_supernode_secret
    secrets:
      - superexec_supernode_secret
      - {source: node_${i}_key, target: node_key}
    depends_on:
      supernode-$i:
        condition: service_healthy
EOF
    done
    if ((nodes > BASE_NODES)); then
        echo "secrets:"
        for ((i = BASE_NODES; i < nodes; i++)); do
            printf '  node_%d_key:\n    file: ${FEDBUFF_CREDENTIALS:-./certs/out}/node-%d\n' "$i" "$i"
        done
    fi
} > "$override"
echo "wrote $override ($nodes SuperNodes)"

[ "$write_only" = 0 ] || exit 0
read -r -a compose <<<"${COMPOSE:-docker compose}"
files=(-f "$here/compose.yml")
[ "$gpu" = 0 ] || files+=(-f "$here/compose.gpu.yml")
files+=(-f "$override")
# Only the nodes (and what they depend on: the SuperLink, the key registration, which runs again
# and registers the new keys): monitoring and the ServerApp's SuperExec are left as they run.
services=(register-supernodes)
for ((i = 0; i < nodes; i++)); do
    services+=("supernode-$i" "superexec-clientapp-$i")
done
"${compose[@]}" "${files[@]}" up -d --remove-orphans "${services[@]}"
# Nodes switched off by the "scaled-out" profile are not touched by `up`: stop and remove them.
for ((i = nodes; i < BASE_NODES; i++)); do
    "${compose[@]}" "${files[@]}" rm --stop --force "supernode-$i" "superexec-clientapp-$i"
done
