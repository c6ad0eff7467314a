#!/bin/sh
# Add the TLS connection "fedintent" to FLWR_HOME/config.toml, so that
# `flwr supernode register KEY.pub fedintent` and `flwr ls fedintent` verify the SuperLink.
# The operator's other connections and default stay; --default makes "fedintent" the default
# even where another is (deploy/flwr_connection.py). HOST:PORT and CA_CERT are checked first.
#
#   usage: FLWR_HOME=DIR deploy/flwr-connection.sh [--default] HOST:PORT CA_CERT
set -eu

: "${FLWR_HOME:?set FLWR_HOME to the folder for this connection}"
command -v python > /dev/null || {
    echo "flwr-connection: python is not on PATH; activate the virtual environment fedintent" \
        "is installed in (. .venv/bin/activate) and start again" >&2
    exit 2; }
exec python "$(cd "$(dirname "$0")" && pwd)/flwr_connection.py" "$@"
