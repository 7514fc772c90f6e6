# Build: docker build -t ballast .
# Run:   docker run -p 8080:8080 -v $PWD/my.toml:/etc/ballast/ballast.toml ballast
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY tests tests
RUN cargo build --release --locked --bin ballast

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home ballast
COPY --from=build /src/target/release/ballast /usr/local/bin/ballast
COPY deploy/compose/ballast.toml /etc/ballast/ballast.toml
USER ballast
# 8080: clients; 9090: admin (/metrics /healthz /readyz /status)
EXPOSE 8080 9090
ENTRYPOINT ["ballast"]
CMD ["--config", "/etc/ballast/ballast.toml", "run"]
