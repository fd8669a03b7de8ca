# relaybot as a container: `relaybot serve` (web + in-process worker) by default, configured by
# environment variables only (see docs/deploy.md). Run `relaybot worker` or `relaybot migrate`
# from the same image for separate worker containers or a migration job.

# --- build: a virtual environment with relaybot and its dependencies -----------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/relaybot
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY agents ./agents
COPY channels ./channels
COPY migrations ./migrations
COPY templates ./templates
RUN /opt/relaybot/bin/pip install .

# --- run: slim base, the environment only, a user without privileges -----------------------
FROM python:3.11-slim
ENV PATH=/opt/relaybot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    LOG_FORMAT=json \
    HOST=0.0.0.0 \
    PORT=8000
# git: deploybot lists a repository's tags.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 relaybot
COPY --from=build /opt/relaybot /opt/relaybot
USER relaybot
WORKDIR /home/relaybot
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
# Migrations run at start under a Postgres advisory lock, so replicas never race.
CMD ["relaybot", "serve"]
