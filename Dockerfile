# opsloop runtime image: every opsloop service in docker-compose.yml runs it
# with a different `opsloop` subcommand.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The repo is copied whole (minus .dockerignore) because the default
# site, policy and topic files ship in the package (config/).
WORKDIR /app
COPY . .

# The data dir is created here, owned by the runtime user, so a named volume
# mounted on it starts with that ownership and the non-root worker can write.
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin opsloop \
    && mkdir -p /app/var \
    && chown opsloop:opsloop /app/var

ENV OPSLOOP_DATA_DIR=/app/var \
    OPSLOOP_DUCKDB_PATH=/app/var/opsloop.duckdb

USER opsloop

ENTRYPOINT ["opsloop"]
CMD ["--help"]
