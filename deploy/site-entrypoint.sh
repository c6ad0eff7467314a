#!/bin/sh
# Start this site's Flower SuperNode: TLS to the SuperLink, signed in with the site's own key,
# data and budget from the site's own node config, and only app bundles signed by a key in
# TRUSTED_ENTITIES run here. The site container's entrypoint; also runs as is outside a
# container. Every connection it makes is outbound, to SUPERLINK: the SuperNode is Flower's,
# started as fedintent-supernode, which refuses redirects (fl_client/supernode.py). Configured by
# the environment only; it takes no arguments. A variable that looks like a setting below but is
# none (MAX_EPSILION), a setting set but empty, or one holding a control character is refused:
# each would leave the site at a default it was not meant to have. fedintent-supernode prints
# the settings the site holds every run to, defaults named, and warns of a setting that has no
# effect under another or of DP evaluations it will decline (fl_client/start_checks.py).
#
#   SUPERLINK         host:port of the SuperLink (required)
#   CA_CERT           CA certificate that signed the SuperLink's certificate
#                     (default /credentials/ca.crt)
#   SITE_KEY          this site's private key, OpenSSH EC format (default /credentials/site.key)
#   TRUSTED_ENTITIES  the operator's release-signing public key(s), Flower's trusted-entities
#                     YAML (default /credentials/trusted-entities.yaml); the site refuses to
#                     start without it
#   DATA_DIR          this site's data folder (default /data)
#   STATE_DIR         privacy ledger, caches, egress log (default /state). It must persist:
#                     a state folder without a site secret is refused
#   INIT_STATE        1: make a new site's state folder and its site secret, then exit (a
#                     one-off run before the site's first start; any other value is refused,
#                     so that "true" never starts the site instead). The site itself refuses an
#                     empty STATE_DIR, taking it for a lost or unmounted one (the ledger and
#                     every unit's spent budget would start again from zero)
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
#                     all its rounds together, 0.1 to 100 (default: the ClientApp's, 8)
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
umask 077

[ $# -eq 0 ] || {
    echo "site-entrypoint: takes no arguments (got: $*); configure it with environment variables" >&2
    exit 2; }
# The environment, before anything is read from it (found in review): a misspelled setting
# (MAX_EPSILION=2) or one set but empty (MAX_EPSILON= from an unset compose variable) left the
# site at the default, a looser budget or policy than meant, without a word; INIT_STATE=true
# started the long-running site; a line break in a value crashed Flower's parser.
python - <<'PY' || exit 2
import os
import sys

from fl_protocol.settings import near_miss

POLICY = ("MAX_EPSILON", "MAX_DELTA", "PRIVACY_UNIT", "PRIVACY_MODELS", "MIN_TOLERATED_SITES",
          "MAX_EPSILON_ALONE", "MAX_NOISE_RATIO", "LANGUAGES", "LABELS_FILE", "EVALUATION",
          "EVALUATION_EPSILON", "LOCAL_MODELS", "RETENTION_DAYS", "PURGE_INTERVAL_HOURS")
OTHERS = ("SUPERLINK", "CA_CERT", "SITE_KEY", "TRUSTED_ENTITIES", "DATA_DIR", "STATE_DIR",
          "INIT_STATE", "SUPERNODE_PORT", "HEALTH_PORT")
# Names only the site's policy has, refused after any prefix (SITE_MAX_EPSILON); the others
# only after FEDINTENT_, since other software has its own (LOG_RETENTION_DAYS,
# SUPPORTED_LANGUAGES, HF_LOCAL_MODELS, ENABLE_EVALUATION: found in review)
DISTINCTIVE = ("MAX_EPSILON", "MAX_DELTA", "PRIVACY_UNIT", "PRIVACY_MODELS",
               "MIN_TOLERATED_SITES", "MAX_EPSILON_ALONE", "MAX_NOISE_RATIO",
               "EVALUATION_EPSILON", "PURGE_INTERVAL_HOURS")
for name in sorted(set(os.environ) - set(POLICY) - set(OTHERS) - {"LANGUAGE"}):  # gettext's
    # a near miss in any case (max_epsilon, MAX_EPSILION), or a setting's name after a prefix
    # (FEDINTENT_RETENTION_DAYS, SITE_MAX_EPSILON); not every MAX_* or *_PORT: Kubernetes,
    # compose and build tools set their own (EVALUATION_PORT for a Service named evaluation)
    upper = name.upper()
    ours = upper.removeprefix("FEDINTENT_") if upper.startswith("FEDINTENT_") else None
    if ours is None and any(upper.endswith(f"_{setting}") for setting in POLICY
                            if setting not in DISTINCTIVE):
        continue  # another program's setting of that name (LOG_RETENTION_DAYS), which
        # difflib would take for a near miss
    meant = near_miss(name, POLICY, DISTINCTIVE) or (ours if ours in POLICY else None)
    if meant:
        sys.exit(f"site-entrypoint: {name} is not a setting of the site (did you mean "
                 f"{meant}?); the settings are listed at the top of deploy/site-entrypoint.sh")
for name in POLICY + OTHERS:
    if name in os.environ and not os.environ[name].strip() and name != "INIT_STATE":
        sys.exit(f"site-entrypoint: {name} is set but empty; give it a value, or unset it for "
                 "the default")
for name in POLICY + OTHERS:
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in os.environ.get(name, "")):
        sys.exit(f"site-entrypoint: {name} holds a line break or another control character")
if os.environ.get("INIT_STATE", "") not in ("", "1"):
    sys.exit("site-entrypoint: INIT_STATE must be 1 (make a new site's state folder, then exit) "
             f"or unset, not {os.environ['INIT_STATE']!r}")
PY
STATE_DIR="${STATE_DIR:-/state}"
if [ "${INIT_STATE:-}" = 1 ]; then
    # A new site's state folder, made by a one-off run that exits: INIT_STATE is never set on
    # the long-running site, which therefore always refuses a lost or unmounted state folder.
    if [ -e "$STATE_DIR/site-secret" ]; then
        echo "site-entrypoint: INIT_STATE=1: $STATE_DIR already holds a site secret; nothing done"
        exit 0
    fi
    fedintent init-site --state-dir "$STATE_DIR" || exit 2
    echo "site-entrypoint: INIT_STATE=1: now start the site without INIT_STATE"
    exit 0
fi
: "${SUPERLINK:?set SUPERLINK to the SuperLink address, host:port}"
CA_CERT="${CA_CERT:-/credentials/ca.crt}"
SITE_KEY="${SITE_KEY:-/credentials/site.key}"
TRUSTED_ENTITIES="${TRUSTED_ENTITIES:-/credentials/trusted-entities.yaml}"
DATA_DIR="${DATA_DIR:-/data}"
SUPERNODE_PORT="${SUPERNODE_PORT:-9094}"

for name in CA_CERT SITE_KEY TRUSTED_ENTITIES; do
    eval "file=\$$name"
    [ -r "$file" ] || { echo "site-entrypoint: $name $file: cannot read it (missing, or not" \
        "readable by uid $(id -u))" >&2; exit 2; }
done
# Flower verifies bundles only when the file names at least one key: an empty file would let
# every bundle run, so refuse anything but a non-empty map of Ed25519 keys. The CA certificate
# and the site's key are read here too, so that a wrong file is named, not a Flower traceback.
python - "$TRUSTED_ENTITIES" "$CA_CERT" "$SITE_KEY" <<'PY' || exit 2
import ssl
import sys

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedintent.launch.certificates import is_ca_certificate, signing_key_id

path, ca_cert, site_key = sys.argv[1:]
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
for name, value in keys.items():
    try:
        key = load_ssh_public_key(str(value).encode())
    except (ValueError, UnsupportedAlgorithm) as err:
        sys.exit(f"site-entrypoint: {path}: {name} is not a readable ssh-ed25519 key ({err})")
    if not isinstance(key, ed25519.Ed25519PublicKey):
        sys.exit(f"site-entrypoint: {path}: {name} is not an ssh-ed25519 key")
    if name != signing_key_id(key):  # found in review: the site started, and refused every run
        sys.exit(f"site-entrypoint: {path}: the key named {name!r} must be named by its "
                 f"fingerprint, {signing_key_id(key)}: Flower looks a release's key up by it")
try:
    ssl.create_default_context(cafile=ca_cert)
    with open(ca_cert, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
except (OSError, ssl.SSLError, ValueError) as err:
    sys.exit(f"site-entrypoint: CA_CERT {ca_cert} is not a PEM CA certificate ({err})")
if not any(map(is_ca_certificate, certificates)):  # found in review: the SuperLink's own
    # certificate passed
    sys.exit(f"site-entrypoint: CA_CERT {ca_cert} is a certificate but no CA's (the SuperLink's "
             "own?): give the certificate authority's, ca.crt")
try:
    with open(site_key, "rb") as f:
        own = load_ssh_private_key(f.read(), None)
except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
    sys.exit(f"site-entrypoint: SITE_KEY {site_key} is not an unencrypted OpenSSH private key "
             f"({err})")
if not isinstance(own, ec.EllipticCurvePrivateKey):
    sys.exit(f"site-entrypoint: SITE_KEY {site_key} is not an EC key (fedintent certs writes one)")
print(f"site-entrypoint: running only app bundles signed by {', '.join(map(str, keys))}")
PY
case "$DATA_DIR$STATE_DIR${PRIVACY_UNIT:-}${PRIVACY_MODELS:-}${LOCAL_MODELS:-}${LABELS_FILE:-}${LANGUAGES:-}${EVALUATION:-}" in
    *"'"*) echo "site-entrypoint: DATA_DIR, STATE_DIR, PRIVACY_UNIT, PRIVACY_MODELS, LOCAL_MODELS, LABELS_FILE, LANGUAGES and EVALUATION cannot contain a single quote" >&2
           exit 2;;
esac
# A number as Flower's node-config parser reads it back exactly (found in review: " 4" was
# dropped without a word, so the site ran at the default budget; "07" and ".5" crashed Flower
# with a traceback naming no variable; dash read "010" hours as octal 8), in ASCII digits only
# (Python's own parser reads "1_5" as 15). Prints the canonical form, or exits 2 naming the
# variable. A whole number may be held to a range: number NAME VALUE int LOW HIGH.
number() {  # number NAME VALUE int|float [LOW HIGH]
    python - "$@" <<'PY' || exit 2
import math
import sys

from fl_protocol.written_numbers import written_number, written_whole_number

name, text, kind, *bounds = sys.argv[1:]
try:
    if kind == "int":
        value = written_whole_number(name, text)
    else:
        try:
            value = written_number(name, text)
        except ValueError:  # again, to name its node-config span in the message (imported
            # only here: Flower's import takes about a second, at each setting)
            from fl_protocol.wire import SITE_NUMBER_SPANS
            written_number(name, text, SITE_NUMBER_SPANS[name.lower().replace("_", "-")])
            raise
except ValueError as err:
    sys.exit(f"site-entrypoint: {err}")
if bounds and not int(bounds[0]) <= value <= int(bounds[1]):
    sys.exit(f"site-entrypoint: {name} must be a whole number from {bounds[0]} to {bounds[1]}, "
             f"not {text!r}")
print(value if kind == "int" else "inf" if value == math.inf else repr(value))
PY
}
for name in MAX_EPSILON MAX_DELTA MAX_EPSILON_ALONE MAX_NOISE_RATIO RETENTION_DAYS \
        EVALUATION_EPSILON; do
    eval "value=\${$name:-}"
    [ -z "$value" ] || eval "$name=\$(number $name \"\$value\" float)"
done
[ -z "${MIN_TOLERATED_SITES:-}" ] || \
    MIN_TOLERATED_SITES=$(number MIN_TOLERATED_SITES "$MIN_TOLERATED_SITES" int)
PURGE_INTERVAL_HOURS=$(number PURGE_INTERVAL_HOURS "${PURGE_INTERVAL_HOURS:-24}" int 0 8760)
SUPERNODE_PORT=$(number SUPERNODE_PORT "$SUPERNODE_PORT" int 1 65535)
[ -z "${HEALTH_PORT:-}" ] || HEALTH_PORT=$(number HEALTH_PORT "$HEALTH_PORT" int 1 65535)
# Both ports free on 127.0.0.1, where the SuperNode listens (found in review: one in use gave a
# traceback, or a SuperNode that never exited, its health check answered by another node).
python - "$SUPERNODE_PORT" "${HEALTH_PORT:-}" <<'PY' || exit 2
import socket
import sys

supernode, health = sys.argv[1:]
if supernode == health:
    sys.exit(f"site-entrypoint: SUPERNODE_PORT and HEALTH_PORT must differ (both {health})")
for name, port in (("SUPERNODE_PORT", supernode), ("HEALTH_PORT", health)):
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            if port:
                probe.bind(("127.0.0.1", int(port)))
        except OSError as err:
            sys.exit(f"site-entrypoint: {name} {port}: 127.0.0.1:{port} cannot be used "
                     f"({err.strerror}); each SuperNode on a host needs ports of its own")
PY
node_config="" node_keys=""
setting() {  # setting KEY VALUE [quoted]: KEY=VALUE into the node config, when VALUE is set
    [ -n "$2" ] || return 0
    if [ "${3:-}" = quoted ]; then
        node_config="$node_config $1='$2'"
    else
        node_config="$node_config $1=$2"
    fi
    node_keys="$node_keys $1"
}
setting data-path "$DATA_DIR" quoted
setting state-dir "$STATE_DIR" quoted
setting max-epsilon "${MAX_EPSILON:-}"
setting max-delta "${MAX_DELTA:-}"
setting privacy-unit "${PRIVACY_UNIT:-}" quoted
setting privacy-models "${PRIVACY_MODELS:-}" quoted
setting min-tolerated-sites "${MIN_TOLERATED_SITES:-}"
setting max-epsilon-alone "${MAX_EPSILON_ALONE:-}"
setting max-noise-ratio "${MAX_NOISE_RATIO:-}"
setting languages "${LANGUAGES:-}" quoted
setting retention-days "${RETENTION_DAYS:-}"
setting evaluation "${EVALUATION:-}" quoted
setting evaluation-epsilon "${EVALUATION_EPSILON:-}"
setting labels-file "${LABELS_FILE:-}" quoted
setting local-models "${LOCAL_MODELS:-}" quoted
# What Flower will read must be what was set: every variable given is a key of the node config.
# Then the checks fedintent-supernode makes of its node config (fl_client/start_checks.py), each
# setting beside the data folder alone, so that the variable at fault is named.
python - "$node_config" $node_keys <<'PY' || exit 2
import sys

from flwr.common.config import parse_config_args

from fl_client.site_policy import SiteConfigError
from fl_client.start_checks import check_node_config

read = parse_config_args([sys.argv[1]])
if sorted(read) != sorted(sys.argv[2:]):
    sys.exit(f"site-entrypoint: the node config would hold {sorted(read)}, not the settings given "
             f"({sorted(sys.argv[2:])}); check the variables for stray characters")
variables = {"data-path": "DATA_DIR", "state-dir": "STATE_DIR"}
for key, value in read.items():  # data-path first
    try:
        check_node_config({"data-path": read["data-path"], key: value})
    except SiteConfigError as err:
        sys.exit(f"site-entrypoint: {variables.get(key, key.upper().replace('-', '_'))} is "
                 f"invalid: {err}")
PY
if [ -e "$STATE_DIR" ] && [ ! -d "$STATE_DIR" ]; then  # found in review: "holds no site secret"
    echo "site-entrypoint: STATE_DIR $STATE_DIR is not a folder: give the site's state folder," \
        "the one that holds its site-secret" >&2
    exit 2
fi
if [ ! -e "$STATE_DIR/site-secret" ]; then
    echo "site-entrypoint: STATE_DIR $STATE_DIR holds no site secret. Either this is a new" \
        "site (make its state folder once with INIT_STATE=1, a run that makes it and exits)," \
        "or its state folder was lost or is not mounted: the privacy ledger and every unit's" \
        "spent budget would start again from zero. Mount the site's persistent state folder," \
        "or restore it from a backup (docs/SITE_GUIDE.md, \"Back up and restore\")" >&2
    exit 2
fi
chmod 700 "$STATE_DIR" || {
    echo "site-entrypoint: cannot make STATE_DIR $STATE_DIR owner-only (0700): it must belong" \
        "to the user this runs as (uid $(id -u))" >&2
    exit 2; }

export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

# The start time of process $1, field 22 of /proc/PID/stat (counted after its name, in
# parentheses, which may hold spaces); nothing where there is no /proc (not Linux).
start_time() {
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    set -- ${stat##*") "}
    echo "${20}"
}
# Whether process $1, started at $2, still runs: not ended, not ended but unreaped (a zombie)
# and not another process that took its PID, all of which kill -0 takes for it (found in
# review: the purge loop outlived its site so). Without /proc, kill -0 is all there is.
running() {
    [ -n "$2" ] || { kill -0 "$1" 2>/dev/null; return; }
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    set -- "$2" ${stat##*") "}
    [ "$2" != Z ] && [ "$2" != X ] && [ "${21}" = "$1" ]
}
if [ "$PURGE_INTERVAL_HOURS" -gt 0 ]; then
    # The retention policy between rounds (the ClientApp also purges before each training
    # round); it lives as long as the SuperNode this shell becomes, looking every 10 s (found
    # in review: outside a container, each loop outlived its SuperNode, asleep for a day).
    # unset: the ClientApp's default, not what a purge run by hand last recorded (found in
    # review: a one-off `purge --retention-days inf` made every scheduled purge keep all rows)
    retention=${RETENTION_DAYS:-$(python -c \
        'from fl_protocol.wire import DEFAULT_RETENTION_DAYS; print(DEFAULT_RETENTION_DAYS)')}
    set -- "$DATA_DIR" --state-dir "$STATE_DIR" --retention-days "$retention"
    site=$$ site_start=$(start_time $$)
    (
        while running "$site" "$site_start"; do
            fedintent purge "$@" || echo "site-entrypoint: scheduled purge failed (see above);" \
                "next try in $PURGE_INTERVAL_HOURS h" >&2
            slept=0
            while [ "$slept" -lt $((PURGE_INTERVAL_HOURS * 3600)) ] &&
                running "$site" "$site_start"
            do
                sleep 10
                slept=$((slept + 10))
            done
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
exec fedintent-supernode "$@"
