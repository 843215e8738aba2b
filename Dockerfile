# ketamine-cds: CDS Hooks 2.0 service. Build: docker build -t ketamine-cds .
# Run:  docker run -p 8411:8411 -v $PWD/config:/config ketamine-cds \
#         --trusted-issuers /config/trusted-issuers.yaml --public-base-url https://cds.example.org
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KETAMINE_CDS_RULES_DIR=/app/rules \
    KETAMINE_CDS_DATABASE=/data/feedback.sqlite3

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY rules ./rules
COPY fhir_examples ./fhir_examples
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin cds \
    && mkdir -p /data && chown cds /data

USER cds
EXPOSE 8411
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8411/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["ketamine-cds", "serve", "--host", "0.0.0.0", "--port", "8411"]
CMD []
