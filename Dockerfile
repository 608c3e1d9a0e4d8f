# syntax=docker/dockerfile:1.7
#
# creditflow: a small runtime image with the `creditflow` binary only.
#
#   docker build -t creditflow .
#   docker run --rm creditflow demo --catalog /etc/creditflow/catalog.toml --seconds 5
#   docker run -d --name creditflow \
#     -v "$PWD/config:/etc/creditflow:ro" \          # creditflow.toml and catalog.toml
#     -v creditflow-snapshots:/var/lib/creditflow \  # snapshots must outlive the container
#     -e CREDITFLOW_NATS_URL=nats://nats:4222 \
#     -p 127.0.0.1:9464:9464 creditflow
#
# The runtime stage is distroless (glibc, CA certificates, no shell, no package manager) and
# runs as the unprivileged `nonroot` user (uid 65532). `docker stop` sends SIGTERM: creditflow
# drains, publishes what is pending, snapshots and exits 0 (give it --time 70: it waits up to
# 60 s for pending outputs).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: source changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY loadgen/Cargo.toml loadgen/Cargo.toml
RUN mkdir -p src benches loadgen/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs \
 && echo 'fn main() {}' > loadgen/src/main.rs \
 && cargo build --release --locked -p creditflow --bin creditflow \
 && rm -rf src benches loadgen/src
COPY src src
COPY benches benches
COPY loadgen/src loadgen/src
COPY config config
# Touch so cargo sees the real sources as newer than the placeholder build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p creditflow --bin creditflow \
 && strip target/release/creditflow \
 && mkdir -p /out/etc/creditflow /out/var/lib/creditflow/snapshots \
 && cp target/release/creditflow /out/creditflow \
 && cp config/catalog.toml config/creditflow.toml /out/etc/creditflow/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/creditflow /usr/local/bin/creditflow
# Defaults baked in; mount your own over /etc/creditflow.
COPY --from=build /out/etc/creditflow /etc/creditflow
COPY --from=build --chown=65532:65532 /out/var/lib/creditflow /var/lib/creditflow
# Paths for the image's layout (environment overrides of the config's keys).
ENV CREDITFLOW_ENGINE_CATALOG=/etc/creditflow/catalog.toml \
    CREDITFLOW_SNAPSHOT_DIR=/var/lib/creditflow/snapshots \
    CREDITFLOW_METRICS_LISTEN=0.0.0.0:9464 \
    CREDITFLOW_METRICS_API=false \
    CREDITFLOW_LOG_FORMAT=json \
    MIMALLOC_PURGE_DELAY=60000
# MIMALLOC_PURGE_DELAY: the allocator keeps freed memory for 60 s before returning it to the
# kernel (its default is 1 s), so the first snapshot after an idle spell does not fault its
# pages back in on the shard (docs/PERFORMANCE.md: a partition's longest wait after a drain
# 68 ms against 172 ms).
# The HTTP read API shows every account's balance, so on the container's public port it needs
# a token: run with -e CREDITFLOW_METRICS_API=true -e CREDITFLOW_METRICS_TOKEN=<secret> to
# serve it (a public address with the API on and no token is refused at start).
USER nonroot
WORKDIR /var/lib/creditflow
VOLUME ["/var/lib/creditflow"]
EXPOSE 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/creditflow"]
CMD ["run", "--config", "/etc/creditflow/creditflow.toml"]
