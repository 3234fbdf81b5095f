# One image for every shop service and the edge companion (`meshctl edge serve`).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY generated ./generated
COPY base ./base
COPY mesh ./mesh
COPY interceptors ./interceptors
COPY services ./services
COPY envoy ./envoy
RUN pip install ./generated .
# An unprivileged user that owns what the processes write: the data directory (SQLite
# fallback, saga/outbox files when no PostgreSQL URL is set) and the edge companion's EDS
# directory (a named volume mounted there starts with this ownership).
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin mesh \
 && mkdir -p /data /var/run/envoy/eds \
 && chown mesh:mesh /data /var/run/envoy/eds
# Listen on every interface inside the container; register the container's name.
ENV MESH_HOST=0.0.0.0 MESH_DATA_DIR=/data
# The mesh PKI volume (compose `pki-init`) starts from this directory: 0700, the services' user.
# The NATS credentials volume (compose `nats-init`) likewise.
RUN mkdir -p /etc/shop-mesh/pki /etc/shop-mesh/nats \
 && chown mesh /etc/shop-mesh/pki /etc/shop-mesh/nats \
 && chmod 0700 /etc/shop-mesh/pki /etc/shop-mesh/nats
USER mesh
CMD ["python", "-m", "services.users"]
