# One image for every shop service and the edge companion (`meshctl edge serve`).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY generated ./generated
COPY mesh ./mesh
COPY base ./base
COPY interceptors ./interceptors
COPY services ./services
COPY envoy ./envoy
RUN pip install .
# Listen on every interface inside the container; register the container's name.
ENV MESH_HOST=0.0.0.0
# The mesh PKI volume (compose `pki-init`) starts from this directory: 0700, the services' user.
RUN mkdir -p /etc/shop-mesh/pki && chown nobody /etc/shop-mesh/pki && chmod 0700 /etc/shop-mesh/pki
USER nobody
CMD ["python", "-m", "services.users"]
