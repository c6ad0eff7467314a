#!/bin/sh
# Start the SuperLink: TLS on every API, only registered sites admitted, no dependency
# installation at run time. The ServerApp runs here and writes each run's outputs here.
#
# Flower 1.41 serves the sites' Fleet API, the operator's Control API (`flwr run`, `flwr
# supernode register`) and the ServerApp's Runtime API on one port, with no operator
# authentication. So the SuperLink itself listens on 127.0.0.1:CONTROL_PORT only, and
# deploy/fleet_gateway.py serves the public SUPERLINK_HOST:SUPERLINK_PORT, forwarding the Fleet
# API and nothing else: submitting a run takes a login on this machine (docs/DEPLOYMENT.md).
# Signed releases reach the SuperLink from `fedintent deploy-run` on 127.0.0.1:RELEASE_PORT.
#
#   CERT_DIR            folder with ca.crt, superlink.crt, superlink.key (required)
#                       (refused, exit 2, if superlink.crt is not superlink.key's, is a CA's,
#                       has expired or is not valid yet, is not valid for
#                       SUPERLINK_PUBLIC_NAME, or else SUPERLINK_HOST (unless 0.0.0.0 or ::),
#                       or ca.crt is not a CA certificate that verifies it or holds a key; a
#                       warning within 30 days of its expiry, or where it has no
#                       subjectAltName)
#   SUPERLINK_HOST      address of this machine the gateway listens on for the sites
#                       (default 0.0.0.0, every interface)
#   SUPERLINK_PUBLIC_NAME
#                       the DNS name or IP address the sites connect to, where that is no
#                       address of this machine (behind NAT): the certificate is checked
#                       against it instead of SUPERLINK_HOST, and it is neither resolved nor
#                       bound here, so SUPERLINK_HOST may be the local address the forwarded
#                       port arrives at (default: unset, the sites connect to SUPERLINK_HOST)
#   SUPERLINK_PORT      public port for the sites, Fleet API only (default 9093)
#   CONTROL_PORT        port on 127.0.0.1 for flwr, fedintent deploy-run and the ServerApp
#                       (default 9091)
#   RELEASE_PORT        port on 127.0.0.1 where deploy-run hands over a signed release
#                       (default 9095)
#   SUPERLINK_DATABASE  state file, so registered sites survive a restart (default: in memory)
#   FLEET_MAX_BODY_MIB  largest request body the gateway forwards, in MiB (default 64: see
#                       MAX_BODY_MIB in deploy/fleet_gateway.py)
#
# Before anything starts, a variable that looks like a setting but is none (SUPERLINK_HOTS,
# superlink_database, FEDINTENT_SUPERLINK_HOST), a setting set but empty, a SUPERLINK_HOST with
# a scheme or a :PORT or that does not resolve, a SUPERLINK_PUBLIC_NAME with a scheme or a
# :PORT, a port outside [1, 65535], used twice on one address or that cannot be bound now, and
# a SUPERLINK_DATABASE that is a folder, lies in a missing folder or is not an SQLite file are
# refused (exit 2, naming the variable): each had fallen back to a default without a word, or
# failed after start (deploy/superlink_checks.py).
set -eu

for command in python flower-superlink; do
    command -v "$command" > /dev/null || {
        echo "superlink: $command is not on PATH; activate the virtual environment fedintent" \
            "is installed in (. .venv/bin/activate) and start again" >&2
        exit 2; }
done
: "${CERT_DIR:?set CERT_DIR to the folder holding ca.crt, superlink.crt and superlink.key}"
# Defaults for unset settings only: one set but empty is refused by the check below.
export SUPERLINK_HOST="${SUPERLINK_HOST-0.0.0.0}" SUPERLINK_PORT="${SUPERLINK_PORT-9093}" \
    CONTROL_PORT="${CONTROL_PORT-9091}" RELEASE_PORT="${RELEASE_PORT-9095}"
here="$(cd "$(dirname "$0")" && pwd)"
python "$here/superlink_checks.py" || exit 2
for file in ca.crt superlink.crt superlink.key; do
    [ -r "$CERT_DIR/$file" ] || { echo "superlink: cannot read $CERT_DIR/$file" >&2; exit 2; }
done

# The Fleet gateway on the public address, with these arguments added; it replaces the shell
# that calls it, so its process id is the one to stop.
fleet_gateway() {
    exec python "$here/fleet_gateway.py" \
        --listen "$SUPERLINK_HOST:$SUPERLINK_PORT" \
        --upstream "127.0.0.1:$CONTROL_PORT" \
        --ca-cert "$CERT_DIR/ca.crt" \
        --certfile "$CERT_DIR/superlink.crt" \
        --keyfile "$CERT_DIR/superlink.key" \
        ${SUPERLINK_PUBLIC_NAME:+--public-name "$SUPERLINK_PUBLIC_NAME"} \
        ${FLEET_MAX_BODY_MIB:+--max-body-mib "$FLEET_MAX_BODY_MIB"} "$@"
}
# Before anything starts: a certificate and key that are garbage, not one pair, a CA's, expired,
# not yet valid or not valid for SUPERLINK_PUBLIC_NAME (as --public-name), or else
# SUPERLINK_HOST (as --listen), and a ca.crt that does not verify them, are refused in one line
# naming the files (Flower would serve them, and the sites report it as a network problem);
# else it prints the names the certificate covers.
(fleet_gateway --check-certificate) || exit 2

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
    FLWR_SUPERGRID_API_URL="http://127.0.0.1:$RELEASE_PORT"

set -- \
    --ssl-ca-certfile "$CERT_DIR/ca.crt" \
    --ssl-certfile "$CERT_DIR/superlink.crt" \
    --ssl-keyfile "$CERT_DIR/superlink.key" \
    --enable-supernode-auth \
    --disable-runtime-dependency-installation \
    --host 127.0.0.1 \
    --port "$CONTROL_PORT"
if [ -n "${SUPERLINK_DATABASE:-}" ]; then
    set -- "$@" --database "$SUPERLINK_DATABASE"
fi
flower-superlink "$@" &
superlink=$!
fleet_gateway &
gateway=$!
# Stop both when either stops or this script is told to stop.
trap 'kill "$superlink" "$gateway" 2>/dev/null || true' EXIT INT TERM
while kill -0 "$superlink" 2>/dev/null && kill -0 "$gateway" 2>/dev/null; do
    sleep 1
done
if kill -0 "$superlink" 2>/dev/null; then stopped="the Fleet gateway"; else stopped="flower-superlink"; fi
echo "superlink: $stopped stopped; stopping the other" >&2
exit 1
