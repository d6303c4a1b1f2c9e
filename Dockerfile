# syntax=docker/dockerfile:1
#
# The Hubflow image: one static-ish Rust binary on distroless, non-root.
#
#   docker build -t hubflow:dev .
#   docker run --rm -v $PWD/deploy/config/dev.toml:/etc/hubflow/hubflow.toml:ro \
#       -e HUBFLOW_ADMIN_TOKEN=... -e ORDERS_TOKEN=... hubflow:dev
#
# Build stage: Debian bookworm, the same glibc as the runtime image; the
# rust image has the C compiler, make and perl that the vendored OpenSSL
# build needs (no apt-get).
# The `dist` profile is the release build the pipelines ship. Cache mounts
# keep the registry and target dir between builds on one builder; the binary
# is copied out of the cache before the stage ends.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY actors ./actors
COPY supervision ./supervision
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin hubflow \
    && install -D -m 0755 target/dist/hubflow /out/usr/local/bin/hubflow \
    && install -d -m 0700 /out/var/lib/hubflow

# Runtime: distroless cc (glibc, libgcc, OpenSSL, CA certificates, tzdata),
# no shell, no package manager, user nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/hubflow /usr/local/bin/hubflow
COPY --from=build --chown=65532:65532 /out/var/lib/hubflow /var/lib/hubflow
ENV HUBFLOW_LOG=info \
    HUBFLOW_LOG_FORMAT=json \
    HUBFLOW_ADMIN_ADDR=127.0.0.1:9464
WORKDIR /var/lib/hubflow
USER 65532:65532
EXPOSE 9464
# The admin port's liveness. Distroless has no curl or shell: the binary is
# its own probe (`hubflow ctl health`: GET /healthz, exit 1 unless 200; it
# sends HUBFLOW_ADMIN_TOKEN from the container's environment, which a
# non-loopback [admin] listen requires on every route).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/hubflow", "ctl", "--timeout-secs", "4", "health"]
# Exec form, no shell in between: SIGTERM reaches hubflow (PID 1), which
# drains and exits 0 within [admin] shutdown_deadline_secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/hubflow"]
CMD ["run", "--config", "/etc/hubflow/hubflow.toml", "--quiet"]
