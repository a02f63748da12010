#!/usr/bin/env bash
# Credentials for a TLS + SuperNode-authentication deployment of fedbuff-deploy.
#
#   docker/certs/generate.sh [-o OUT_DIR] [-n NUM_NODES] [--san HOST_OR_IP]...
#
# Writes into OUT_DIR (default: docker/certs/out, git-ignored):
#   ca.crt, ca.key                  a private CA (ca.key never leaves this folder)
#   superlink.crt, superlink.key    the SuperLink's TLS certificate, signed by the CA, with SANs
#                                   localhost, 127.0.0.1, superlink (the compose service) and
#                                   every --san given (an IP or a host name an edge device dials)
#   node-<i>, public/node-<i>.pub   one EC P-384 key pair per SuperNode (ssh-keygen -t ecdsa -b 384,
#                                   the format flower-supernode --auth-supernode-private-key reads);
#                                   compose registers public/*.pub (or run register.sh)
#   superexec-superlink.secret      shared secrets that authenticate flower-superexec to the
#   superexec-supernode.secret      SuperLink's / the SuperNodes' Runtime API (AcquireTask)
#   grafana-admin-password          Grafana's admin password (a Docker secret)
#
# Re-running is safe: the CA, node keys, secrets and password are kept (registrations depend on
# the node keys); nodes are added up to NUM_NODES; the SuperLink certificate is re-issued with
# every --san given now or before (remembered in superlink-sans.txt: edit it to drop one).
# Needs openssl and ssh-keygen.
#
# Permissions: OUT_DIR is 0700 (only you can enter it on this host); the files containers read
# (certificates, SuperLink/node keys, secrets) are 0644 so that the containers' non-root users can
# read their bind mounts whatever your uid; the CA key is 0600.
set -euo pipefail

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    echo "  -o, --out DIR      output folder (default: docker/certs/out)"
    echo "  -n, --nodes N      SuperNode key pairs to have (default: 3)"
    echo "  --san HOST_OR_IP   extra subject alternative name for the SuperLink (repeatable)"
    echo "  --days DAYS        certificate validity (default: 365)"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/out"
nodes=3
days=365
sans=()
while [ $# -gt 0 ]; do
    case "$1" in
        -o|--out) out="$2"; shift 2 ;;
        -n|--nodes) nodes="$2"; shift 2 ;;
        --san) sans+=("$2"); shift 2 ;;
        --days) days="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "generate.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$nodes" in ''|*[!0-9]*) echo "generate.sh: --nodes needs a number, got '$nodes'" >&2; exit 2 ;; esac
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "generate.sh: '$tool' not found" >&2; exit 1; }
done

mkdir -p "$out"
chmod 0700 "$out"
cd "$out"
umask 077

# --- CA ---------------------------------------------------------------------------------------
if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
    openssl ecparam -name secp384r1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha384 -days "$days" -subj "/CN=fedbuff-deploy CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
    echo "created CA: $out/ca.crt"
fi

# --- SuperLink server certificate ----------------------------------------------------------------
alt="DNS:localhost,IP:127.0.0.1,DNS:superlink"
touch superlink-sans.txt
for san in "${sans[@]+"${sans[@]}"}"; do
    grep -qxF -- "$san" superlink-sans.txt || echo "$san" >> superlink-sans.txt
done
while IFS= read -r san; do
    [ -n "$san" ] || continue
    if [[ "$san" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$san" == *:* ]]; then
        alt="$alt,IP:$san"
    else
        alt="$alt,DNS:$san"
    fi
done < superlink-sans.txt
[ -s superlink.key ] || openssl ecparam -name prime256v1 -genkey -noout -out superlink.key
openssl req -new -key superlink.key -subj "/CN=superlink" -out superlink.csr
printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=$alt" > superlink.ext
openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha384 \
    -days "$days" -extfile superlink.ext -out superlink.crt 2>/dev/null
rm -f superlink.csr superlink.ext ca.srl
openssl verify -CAfile ca.crt superlink.crt >/dev/null
echo "issued SuperLink certificate: $out/superlink.crt ($alt)"

# --- SuperNode authentication keys ---------------------------------------------------------------
mkdir -p public
for ((i = 0; i < nodes; i++)); do
    if [ ! -s "node-$i" ]; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedbuff-node-$i" -f "node-$i"
        mv "node-$i.pub" "public/node-$i.pub"
        echo "created SuperNode key pair: $out/node-$i, $out/public/node-$i.pub"
    elif [ ! -s "public/node-$i.pub" ]; then
        ssh-keygen -y -f "node-$i" > "public/node-$i.pub"
    fi
done

# --- SuperExec shared secrets and the Grafana password -------------------------------------------
for name in superexec-superlink.secret superexec-supernode.secret; do
    [ -s "$name" ] || openssl rand -hex 32 | tr -d '\n' > "$name"
done
[ -s grafana-admin-password ] || openssl rand -base64 24 | tr -d '\n/+=' > grafana-admin-password

chmod 0600 ca.key
chmod 0755 public
chmod 0644 ca.crt superlink.crt superlink.key superexec-*.secret grafana-admin-password node-* \
    public/node-*.pub superlink-sans.txt
echo "credentials in $out; next: register the node keys (docker/certs/register.sh <connection>)"
