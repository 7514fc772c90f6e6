# syntax=docker/dockerfile:1
# Ballast's container image: a multi-stage build, a small Debian runtime, a
# non-root user.
#
#   docker build -t ballast .
#   docker run -p 8080:8080 -v $PWD/my.toml:/etc/ballast/ballast.toml:ro ballast
#
# The config is read from /etc/ballast/ballast.toml (BALLAST_CONFIG moves
# it). Its [admin] listener must be on 0.0.0.0:9090 for the health check,
# probes and Prometheus to reach it from outside the container.

FROM rust:1.95-bookworm AS build
# cmake: Pingora builds zlib-ng with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
# Cargo checks that every target named in the manifest exists, and loads
# the workspace's other members (the benchmark suite's programs).
COPY tests/e2e/main.rs tests/e2e/main.rs
COPY bench/loadgen bench/loadgen
COPY bench/pingora-bare bench/pingora-bare
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ballast \
 && cp target/release/ballast /usr/local/bin/ballast

FROM debian:bookworm-slim
# ca-certificates: the system roots that verify hosted APIs (pool.tls).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ballast
COPY --from=build /usr/local/bin/ballast /usr/local/bin/ballast
COPY deploy/compose/ballast.toml /etc/ballast/ballast.toml
ENV BALLAST_CONFIG=/etc/ballast/ballast.toml
USER 10001:10001
# 8080: clients. 9090: admin (/ status page, /metrics, /healthz, /readyz, /status).
EXPOSE 8080 9090
# SIGTERM drains: /readyz turns 503, new connections stop after
# server.drain_delay, requests in flight get server.grace_period.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["ballast", "probe"]
ENTRYPOINT ["ballast"]
CMD ["run"]
