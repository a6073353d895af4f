# canaryd in a container (SPEC §1).
#
#   docker build -t canaryd .
#   docker run -d --name canaryd --init -p 9870:9870 \
#     -v /srv/canaryd/etc:/etc/canaryd:ro -v canaryd-state:/var/lib/canaryd canaryd
#
# /etc/canaryd holds canaryd.yaml, tokens.yaml and the webhook credential (mount it read-only);
# the config should say `state: {backend: sqlite, path: /var/lib/canaryd/state.db}` so state
# survives the container. The image listens on 0.0.0.0:9870 whatever the config's `listen`
# says (CANARYD_LISTEN below): a container's loopback cannot be reached through a published
# port. `-e CANARYD_LISTEN=[::]:9870`, or `--listen ADDR` after the image name, changes it.
# Docker platforms also need the engine's socket and its group:
#   -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g /var/run/docker.sock)"
# Extra arguments go to `canaryd serve`, e.g. `docker run ... canaryd --log-level debug`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CANARYD_LISTEN=0.0.0.0:9870 \
    CANARYD_HEALTHZ_URL=http://127.0.0.1:9870/healthz

# A fixed, unprivileged uid/gid, so mounted files can be chowned to it on the host.
RUN groupadd --system --gid 10001 canaryd \
 && useradd --system --uid 10001 --gid canaryd --home-dir /var/lib/canaryd \
        --no-create-home --shell /usr/sbin/nologin canaryd

WORKDIR /src
COPY pyproject.toml ./
COPY daemon/ daemon/
COPY rules/ rules/
# pip installs the shipped policies (rules/*.yaml) under $prefix/share/canaryd/rules, where
# canaryd.config.policies.RULES_DIR finds them by name (matriz-fast-track, ...).
RUN pip install --no-cache-dir . \
 && test -f "$(python -c 'import canaryd.config.policies as p; print(p.RULES_DIR)')/matriz-fast-track.yaml" \
 && install -d -o canaryd -g canaryd -m 0750 /etc/canaryd /var/lib/canaryd \
 && cd / && rm -rf /src

WORKDIR /var/lib/canaryd
USER canaryd:canaryd
VOLUME ["/etc/canaryd", "/var/lib/canaryd"]
EXPOSE 9870

# No curl in -slim: the stdlib's urllib does the probe (exit 1 on any non-2xx or no answer).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['CANARYD_HEALTHZ_URL'], timeout=4)"]

# SIGTERM stops canaryd cleanly (decisions are durable; a restart resumes every rollout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["canaryd", "serve", "-c", "/etc/canaryd/canaryd.yaml"]
