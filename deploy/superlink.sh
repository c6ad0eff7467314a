#!/bin/sh
# Start the SuperLink: TLS on every API, only registered sites admitted, no dependency
# installation at run time. The ServerApp runs here and writes each run's outputs here.
#
#   CERT_DIR            folder with ca.crt, superlink.crt, superlink.key (required)
#   SUPERLINK_HOST      address to listen on (default 0.0.0.0)
#   SUPERLINK_PORT      the one port for sites, flwr and the ServerApp (default 9093)
#   SUPERLINK_DATABASE  state file, so registered sites survive a restart (default: in memory)
set -eu

: "${CERT_DIR:?set CERT_DIR to the folder holding ca.crt, superlink.crt and superlink.key}"
for file in ca.crt superlink.crt superlink.key; do
    [ -r "$CERT_DIR/$file" ] || { echo "superlink: cannot read $CERT_DIR/$file" >&2; exit 2; }
done

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

set -- \
    --ssl-ca-certfile "$CERT_DIR/ca.crt" \
    --ssl-certfile "$CERT_DIR/superlink.crt" \
    --ssl-keyfile "$CERT_DIR/superlink.key" \
    --enable-supernode-auth \
    --disable-runtime-dependency-installation \
    --host "${SUPERLINK_HOST:-0.0.0.0}" \
    --port "${SUPERLINK_PORT:-9093}"
if [ -n "${SUPERLINK_DATABASE:-}" ]; then
    set -- "$@" --database "$SUPERLINK_DATABASE"
fi
exec flower-superlink "$@"
