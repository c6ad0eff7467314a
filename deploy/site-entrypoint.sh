#!/bin/sh
# Start this site's Flower SuperNode: TLS to the SuperLink, signed in with the site's own key,
# data and budget from the site's own node config. The site container's entrypoint; also runs
# as is outside a container. Every connection it makes is outbound, to SUPERLINK.
#
#   SUPERLINK       host:port of the SuperLink (required)
#   CA_CERT         CA certificate that signed the SuperLink's certificate
#                   (default /credentials/ca.crt)
#   SITE_KEY        this site's private key, OpenSSH EC format (default /credentials/site.key)
#   DATA_DIR        this site's data folder (default /data)
#   STATE_DIR       privacy ledger, caches, egress log (default /state)
#   MAX_EPSILON     this site's lifetime privacy budget (default 8.0)
#   SUPERNODE_PORT  local port of the SuperNode's API for its ClientApp process (default 9094)
set -eu

: "${SUPERLINK:?set SUPERLINK to the SuperLink address, host:port}"
CA_CERT="${CA_CERT:-/credentials/ca.crt}"
SITE_KEY="${SITE_KEY:-/credentials/site.key}"
DATA_DIR="${DATA_DIR:-/data}"
STATE_DIR="${STATE_DIR:-/state}"
MAX_EPSILON="${MAX_EPSILON:-8.0}"
SUPERNODE_PORT="${SUPERNODE_PORT:-9094}"

for file in "$CA_CERT" "$SITE_KEY"; do
    [ -r "$file" ] || { echo "site-entrypoint: cannot read $file" >&2; exit 2; }
done
[ -d "$DATA_DIR" ] || { echo "site-entrypoint: data folder $DATA_DIR does not exist" >&2; exit 2; }
case "$DATA_DIR$STATE_DIR" in
    *"'"*) echo "site-entrypoint: DATA_DIR and STATE_DIR cannot contain a single quote" >&2; exit 2;;
esac
mkdir -p "$STATE_DIR"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

exec flower-supernode \
    --root-certificates "$CA_CERT" \
    --auth-supernode-private-key "$SITE_KEY" \
    --superlink "$SUPERLINK" \
    --port "$SUPERNODE_PORT" \
    --node-config "data-path='$DATA_DIR' state-dir='$STATE_DIR' max-epsilon=$MAX_EPSILON"
