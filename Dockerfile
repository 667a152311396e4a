# opsloop runtime image: every opsloop service in docker-compose.yml runs it
# with a different `opsloop` subcommand.
# Debian 12 named: its Slurm (22.05) is the one the Slurm backends are tested against.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian's Slurm, munge and slurmrestd with its JWT plugin: the twin profile's twin-slurm runs a local
# cluster (`opsloop slurm up --foreground`), and the scontrol backend needs Slurm's client commands.
# munge's install makes a key; the cluster makes its own at start, so no key stays in the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client slurmrestd \
       slurm-wlm-jwt-plugin munge \
    && rm -rf /var/lib/apt/lists/* /etc/munge/munge.key

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
