#!/bin/sh
# Start this site's Flower SuperNode: TLS to the SuperLink, signed in with the site's own key,
# data and budget from the site's own node config, and only app bundles signed by a key in
# TRUSTED_ENTITIES run here. The site container's entrypoint; also runs as is outside a
# container. Every connection it makes is outbound, to SUPERLINK.
#
#   SUPERLINK         host:port of the SuperLink (required)
#   CA_CERT           CA certificate that signed the SuperLink's certificate
#                     (default /credentials/ca.crt)
#   SITE_KEY          this site's private key, OpenSSH EC format (default /credentials/site.key)
#   TRUSTED_ENTITIES  the operator's release-signing public key(s), Flower's trusted-entities
#                     YAML (default /credentials/trusted-entities.yaml); the site refuses to
#                     start without it
#   DATA_DIR          this site's data folder (default /data)
#   STATE_DIR         privacy ledger, caches, egress log (default /state)
#   MAX_EPSILON       this site's lifetime privacy budget per unit (default: the ClientApp's,
#                     8; fl_protocol/wire.py DEFAULT_MAX_EPSILON)
#   MAX_DELTA         the largest delta this site accepts (default: the ClientApp's, 1e-5)
#   PRIVACY_UNIT      utterance or customer, to insist on one (default: any)
#   PRIVACY_MODELS    the privacy models this site takes part in: local, distributed, or
#                     local,distributed (default: both)
#   MIN_TOLERATED_SITES  distributed DP: fewest missing or colluding sites a run must tolerate
#                     (default: the ClientApp's, 1)
#   MAX_EPSILON_ALONE distributed DP: the most epsilon this site's own noise shares may amount
#                     to, if every other site colluded (default: the ClientApp's, 50)
#   MAX_NOISE_RATIO   the most this site's noise may exceed the run's planned noise before it
#                     declines the round, charging nothing (default: the ClientApp's, 2)
#   LANGUAGES         the languages this site's conversations are in, comma-separated codes
#                     (en, zh, ...; fl_protocol/wire.py LANGUAGES), named in the model card
#                     (default: none declared, nothing sent)
#   LABELS_FILE       this site's taxonomy, one label per line: the site answers only runs
#                     whose label set is exactly this one (default: any run's; a server could
#                     then leave intents out and learn from the counts how many rows carry
#                     the others)
#   EVALUATION        what this site answers evaluate messages with: dp (accuracy and loss
#                     estimated from one Gaussian release per round, charged to the ledger),
#                     exact (the test split's exact metrics, outside every epsilon: only for a
#                     server this site trusts with them) or off (default: the ClientApp's, dp)
#   EVALUATION_EPSILON  with EVALUATION=dp: what one run's evaluations may cost a test unit,
#                     all its rounds together (default: the ClientApp's, 8)
#   LOCAL_MODELS      checkpoint folders on this machine a run may name as its model,
#                     comma-separated (default: none; fedintent's named families only)
#   RETENTION_DAYS    how long this site uses a conversation after its timestamp: older rows
#                     (and, under a limit, undated ones) are never used and their derived data
#                     are purged (default: the ClientApp's, 30; inf: no limit)
#   PURGE_INTERVAL_HOURS  how often `fedintent purge` applies RETENTION_DAYS and recorded
#                     erasures while the site waits for rounds, starting now (default 24; 0:
#                     only the ClientApp's purge before every training round)
#   SUPERNODE_PORT    local port of the SuperNode's API for its ClientApp process (default 9094)
#   HEALTH_PORT       local port of the SuperNode's gRPC health service, on 127.0.0.1, which
#                     deploy/site_healthcheck.py asks (default: none, no health service; the
#                     site container sets 9096). Each SuperNode on one host needs its own
set -eu

: "${SUPERLINK:?set SUPERLINK to the SuperLink address, host:port}"
CA_CERT="${CA_CERT:-/credentials/ca.crt}"
SITE_KEY="${SITE_KEY:-/credentials/site.key}"
TRUSTED_ENTITIES="${TRUSTED_ENTITIES:-/credentials/trusted-entities.yaml}"
DATA_DIR="${DATA_DIR:-/data}"
STATE_DIR="${STATE_DIR:-/state}"
SUPERNODE_PORT="${SUPERNODE_PORT:-9094}"

for file in "$CA_CERT" "$SITE_KEY" "$TRUSTED_ENTITIES"; do
    [ -r "$file" ] || { echo "site-entrypoint: cannot read $file" >&2; exit 2; }
done
# Flower verifies bundles only when the file names at least one key: an empty file would let
# every bundle run, so refuse anything but a non-empty map of Ed25519 keys.
python - "$TRUSTED_ENTITIES" <<'PY' || exit 2
import sys

import yaml

path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as f:
        keys = yaml.safe_load(f)
except (OSError, yaml.YAMLError) as err:
    sys.exit(f"site-entrypoint: {path} is not readable YAML: {err}")
if not isinstance(keys, dict) or not keys:
    sys.exit(f"site-entrypoint: {path} names no trusted key; refusing to run unsigned code")
bad = [k for k, v in keys.items() if not str(v).startswith("ssh-ed25519 ")]
if bad:
    sys.exit(f"site-entrypoint: {path}: {', '.join(map(str, bad))} is not an ssh-ed25519 key")
print(f"site-entrypoint: running only app bundles signed by {', '.join(map(str, keys))}")
PY
[ -d "$DATA_DIR" ] || { echo "site-entrypoint: data folder $DATA_DIR does not exist" >&2; exit 2; }
case "$DATA_DIR$STATE_DIR${PRIVACY_UNIT:-}${PRIVACY_MODELS:-}${LOCAL_MODELS:-}${LABELS_FILE:-}" in
    *"'"*) echo "site-entrypoint: DATA_DIR, STATE_DIR, PRIVACY_UNIT, PRIVACY_MODELS, LOCAL_MODELS and LABELS_FILE cannot contain a single quote" >&2
           exit 2;;
esac
if [ -n "${RETENTION_DAYS:-}" ]; then
    case "$RETENTION_DAYS" in
        *[!0-9.inf]*) RETENTION_DAYS=invalid;;
    esac
    python -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$RETENTION_DAYS" \
        2>/dev/null || {
        echo "site-entrypoint: RETENTION_DAYS must be a number of days > 0, or inf" >&2; exit 2; }
fi
if [ -n "${LABELS_FILE:-}" ]; then
    python -c 'import sys; from fl_protocol.label_file import read_labels; read_labels(sys.argv[1])' \
        "$LABELS_FILE" 2>/dev/null || {
        echo "site-entrypoint: LABELS_FILE $LABELS_FILE is not a readable label file (one label per line, at least two)" >&2
        exit 2; }
fi
case "${EVALUATION:-dp}" in
    dp|exact|off) ;;
    *) echo "site-entrypoint: EVALUATION must be dp, exact or off" >&2; exit 2;;
esac
if [ -n "${EVALUATION_EPSILON:-}" ]; then
    python -c 'import math, sys; e = float(sys.argv[1]); sys.exit(0 if math.isfinite(e) and e > 0 else 1)' \
        "$EVALUATION_EPSILON" 2>/dev/null || {
        echo "site-entrypoint: EVALUATION_EPSILON must be a number > 0" >&2; exit 2; }
fi
PURGE_INTERVAL_HOURS="${PURGE_INTERVAL_HOURS:-24}"
case "$PURGE_INTERVAL_HOURS" in
    ''|*[!0-9]*) echo "site-entrypoint: PURGE_INTERVAL_HOURS must be a whole number of hours" >&2
                 exit 2;;
esac
node_config="data-path='$DATA_DIR' state-dir='$STATE_DIR'"
[ -z "${MAX_EPSILON:-}" ] || node_config="$node_config max-epsilon=$MAX_EPSILON"
[ -z "${MAX_DELTA:-}" ] || node_config="$node_config max-delta=$MAX_DELTA"
[ -z "${PRIVACY_UNIT:-}" ] || node_config="$node_config privacy-unit='$PRIVACY_UNIT'"
[ -z "${PRIVACY_MODELS:-}" ] || node_config="$node_config privacy-models='$PRIVACY_MODELS'"
[ -z "${MIN_TOLERATED_SITES:-}" ] || \
    node_config="$node_config min-tolerated-sites=$MIN_TOLERATED_SITES"
[ -z "${MAX_EPSILON_ALONE:-}" ] || node_config="$node_config max-epsilon-alone=$MAX_EPSILON_ALONE"
[ -z "${MAX_NOISE_RATIO:-}" ] || node_config="$node_config max-noise-ratio=$MAX_NOISE_RATIO"
[ -z "${LANGUAGES:-}" ] || node_config="$node_config languages='$LANGUAGES'"
[ -z "${RETENTION_DAYS:-}" ] || node_config="$node_config retention-days=$RETENTION_DAYS"
[ -z "${EVALUATION:-}" ] || node_config="$node_config evaluation='$EVALUATION'"
[ -z "${EVALUATION_EPSILON:-}" ] || \
    node_config="$node_config evaluation-epsilon=$EVALUATION_EPSILON"
[ -z "${LABELS_FILE:-}" ] || node_config="$node_config labels-file='$LABELS_FILE'"
[ -z "${LOCAL_MODELS:-}" ] || node_config="$node_config local-models='$LOCAL_MODELS'"
mkdir -p "$STATE_DIR"

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if [ "$PURGE_INTERVAL_HOURS" -gt 0 ]; then
    # The retention policy between rounds (the ClientApp also purges before each training
    # round); it lives as long as the SuperNode this shell becomes.
    set -- "$DATA_DIR" --state-dir "$STATE_DIR"
    [ -z "${RETENTION_DAYS:-}" ] || set -- "$@" --retention-days "$RETENTION_DAYS"
    (
        while :; do
            fedintent purge "$@" || echo "site-entrypoint: scheduled purge failed (see above);" \
                "next try in $PURGE_INTERVAL_HOURS h" >&2
            sleep $((PURGE_INTERVAL_HOURS * 3600))
        done
    ) &
fi

set -- \
    --root-certificates "$CA_CERT" \
    --auth-supernode-private-key "$SITE_KEY" \
    --trusted-entities "$TRUSTED_ENTITIES" \
    --superlink "$SUPERLINK" \
    --port "$SUPERNODE_PORT" \
    --node-config "$node_config"
[ -z "${HEALTH_PORT:-}" ] || set -- "$@" --health-server-address "127.0.0.1:$HEALTH_PORT"
exec flower-supernode "$@"
