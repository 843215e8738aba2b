# ketamine-cds: CDS Hooks 2.0 service, with the bundled rules (inside the installed package).
#   docker build -t ketamine-cds .
#   cp config/trusted-issuers.example.yaml config/trusted-issuers.yaml     # then list your EHR's issuer
#   docker run --read-only -p 8411:8411 -v "$PWD/config:/config:ro" -v ketamine-cds-data:/data \
#     ketamine-cds --trusted-issuers /config/trusted-issuers.yaml --public-base-url https://cds.example.org
# Site rules instead of the bundled ones: -v "$PWD/my-rules:/rules:ro" -e KETAMINE_CDS_RULES_DIR=/rules

# -- build: a virtual environment holding the service and its dependencies -------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A C compiler for the compiled hot path (setup.py; the slim image has Python's headers, not gcc).
# In this stage only: the runtime stage gets the built extension modules, no compiler.
# --build-arg KETAMINE_CDS_PURE_PYTHON=1 builds the pure-Python image instead.
ARG KETAMINE_CDS_PURE_PYTHON=
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY fhir_examples ./fhir_examples
COPY fhir_server/__init__.py fhir_server/package.json fhir_server/package-lock.json fhir_server/server.mjs fhir_server/README.md ./fhir_server/
# pip compiles the bytecode at install (the container may run read-only); pip and setuptools are
# then removed from the runtime environment: nothing installs anything at run time. The last line
# prints whether the hot path was compiled (a failed compile leaves a working pure-Python image).
RUN python -m venv /opt/ketamine-cds \
    && KETAMINE_CDS_PURE_PYTHON="$KETAMINE_CDS_PURE_PYTHON" /opt/ketamine-cds/bin/pip install . \
    && /opt/ketamine-cds/bin/ketamine-cds --version \
    && /opt/ketamine-cds/bin/pip uninstall -y pip setuptools

# -- runtime: the slim base, the virtual environment, a non-root user --------------------------------
FROM python:3.11-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="ketamine-cds" \
      org.opencontainers.image.description="CDS Hooks 2.0 clinical decision support for ketamine and esketamine in treatment-resistant depression" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# /data: the SQLite database (feedback, shown cards, JWT replay cache) - a volume, writable under
# --read-only. /dev/shm (a tmpfs in every container) holds gunicorn's worker heartbeat files.
# gunicorn's control socket is off (cds_service/serving.py), so nothing is written to $HOME.
ENV PATH=/opt/ketamine-cds/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KETAMINE_CDS_DATABASE=/data/feedback.sqlite3 \
    KETAMINE_CDS_WORKER_TMP_DIR=/dev/shm
RUN groupadd --system --gid 10001 cds \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cds \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /opt/ketamine-cds /opt/ketamine-cds

USER 10001:10001
WORKDIR /data
EXPOSE 8411
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8411/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["ketamine-cds", "serve", "--host", "0.0.0.0", "--port", "8411"]
CMD []
