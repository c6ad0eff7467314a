#!/bin/sh
# Write FLWR_HOME/config.toml with one TLS connection, "fedintent", to the SuperLink, so that
# `flwr supernode register KEY.pub fedintent` and `flwr ls fedintent` verify the SuperLink.
#
#   usage: FLWR_HOME=DIR deploy/flwr-connection.sh HOST:PORT CA_CERT
set -eu

: "${FLWR_HOME:?set FLWR_HOME to the folder for this connection}"
[ $# -eq 2 ] || { echo "usage: FLWR_HOME=DIR $0 HOST:PORT CA_CERT" >&2; exit 2; }
[ -r "$2" ] || { echo "flwr-connection: cannot read $2" >&2; exit 2; }
ca_cert="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
mkdir -p "$FLWR_HOME"
tmp="$FLWR_HOME/.config.toml.tmp.$$"
cat > "$tmp" <<TOML
[superlink]
default = "fedintent"

[superlink.fedintent]
address = "$1"
root-certificates = "$ca_cert"
TOML
mv "$tmp" "$FLWR_HOME/config.toml"
echo "wrote $FLWR_HOME/config.toml (connection 'fedintent' to $1)"
