# One image for every membus process: `docker run IMAGE worker`, `... stats`, `... demo`.
# Core dependencies only: the [semantic] extra (torch, sentence-transformers) is left out, so
# the image stays small and the default hashing embedder never downloads a model.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# hatchling needs the readme named in pyproject.toml next to it
COPY pyproject.toml README.md ./
COPY locks/base.txt ./locks/base.txt
COPY membus ./membus
COPY agents ./agents
COPY policies ./policies
# A venv is one directory to copy into the runtime stage, without build-time leftovers.
# Every dependency comes from the committed lock at its exact version; membus itself adds none.
RUN python -m venv /opt/membus \
 && /opt/membus/bin/pip install --no-compile -r locks/base.txt \
 && /opt/membus/bin/pip install --no-compile --no-deps . \
 && /opt/membus/bin/python -m compileall -q /opt/membus/lib

FROM python:3.11-slim
ENV PATH=/opt/membus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MEMBUS_PATH=/data
COPY --from=build /opt/membus /opt/membus
# A fixed numeric uid, so volume ownership and `runAsUser`-style policies can refer to it.
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin membus
USER 10001:10001
WORKDIR /data
# Only the embedded default (no MEMBUS_REDIS_URL) keeps state here; with Redis + Qdrant servers
# the container is stateless.
VOLUME ["/data"]
# Exec form: membus is PID 1 and gets SIGTERM itself; `membus worker` finishes the batch in hand
# on the first SIGTERM, so give it a stop grace period longer than one batch.
STOPSIGNAL SIGTERM
# No HEALTHCHECK here: what "healthy" means depends on the command (a worker against Redis vs an
# embedded bus that owns its data directory). compose.yaml sets one per service; `membus stats
# --json` exits 0 only when Redis (and the store) answer, non-zero otherwise.
ENTRYPOINT ["membus"]
CMD ["worker"]
