# kf-chatops image: `kfbot serve` by default; the chart runs `kfbot migrate` from the same image.
# Two stages: "build" installs the package and its dependencies (from pyproject.toml) into a
# virtualenv; the final stage gets only that virtualenv on a clean slim base (no pip cache, no
# build tools, no compilers: every dependency ships wheels, and python:*-slim has no gcc).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/kfbot
# Only what the wheel needs (see .dockerignore, an allow-list).
COPY pyproject.toml README.md ./
COPY bot/ bot/
COPY handlers/ handlers/
COPY provisioning/ provisioning/
COPY migrations/ migrations/
# A regular (non-editable) install compiles .pyc files now, so the read-only root filesystem
# at run time costs nothing. `pip check` fails the build on a broken dependency set.
RUN /opt/kfbot/bin/pip install --no-cache-dir . \
    && /opt/kfbot/bin/pip check

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kf-chatops" \
      org.opencontainers.image.description="Slack chat-ops for Kubeflow on AWS" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME points at /tmp, the only writable path when the root filesystem is read-only (the chart
# mounts an emptyDir there).
ENV PATH=/opt/kfbot/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    KFBOT_HTTP_PORT=3000
RUN groupadd --system --gid 10001 kfbot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kfbot
# Same path as in the build stage, so the venv's scripts keep their interpreter path.
COPY --from=build /opt/kfbot /opt/kfbot
# Numeric, so Kubernetes can verify runAsNonRoot without a runAsUser.
USER 10001:10001
EXPOSE 3000
ENTRYPOINT ["kfbot"]
CMD ["serve"]
