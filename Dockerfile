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
# Listen on every interface inside the container; register the container's name.
ENV MESH_HOST=0.0.0.0
USER nobody
CMD ["python", "-m", "services.users"]
