# syntax=docker/dockerfile:1
#
# spot-canvas container image: `docker build -t spot-canvas .`
#
# Stages:
#   node     Node 20 for the web asset build (only /usr/local is taken from it)
#   nats     the nats-server binary (for the embedded NATS default when NATS_URL is unset)
#   builder  the same commands as `task build`: npm ci, scripts/fetch-datastar.sh, npm run build,
#            cargo build --release --locked
#   runtime  debian:bookworm-slim with the binary, the built static assets and nats-server,
#            running as the non-root user 10001
#
# The image needs DATABASE_URL: it carries no PostgreSQL server for the embedded default.

FROM node:20-bookworm-slim AS node

# nats-server comes from the official alpine image, where it is /usr/local/bin/nats-server (a static
# Go binary, so it runs on Debian too). The scratch variant would have it at /nats-server instead.
FROM nats:2.10-alpine AS nats

FROM rust:1.95-bookworm AS builder
# Node 20 (node, npm, npx) from the official image: same Debian release, so the same glibc.
COPY --from=node /usr/local/ /usr/local/
RUN node --version && npm --version
WORKDIR /build

# 1. npm packages: only invalidated by the lockfiles.
COPY package.json package-lock.json ./
RUN npm ci

# 2. The Datastar client (fetched from crates.io with cargo and checked against its sha256):
#    only invalidated by the script.
COPY scripts/fetch-datastar.sh scripts/fetch-datastar.sh
RUN scripts/fetch-datastar.sh

# 3. Rust dependencies, compiled against stub sources: only invalidated by the manifests (the
#    workspace's and those of its crates under crates/), the lockfile and the bench files the
#    manifest names. Our own crates' artifacts (spot-canvas, spot-canvas-model, spot-canvas-sim)
#    are removed so that the real build below cannot mistake the stubs for up-to-date sources.
COPY Cargo.toml Cargo.lock askama.toml ./
COPY crates/model/Cargo.toml crates/model/Cargo.toml
COPY crates/sim/Cargo.toml crates/sim/Cargo.toml
COPY benches/ benches/
RUN mkdir -p src crates/model/src crates/sim/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && : > crates/model/src/lib.rs \
    && : > crates/sim/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src crates/model/src crates/sim/src \
        target/release/spot-canvas target/release/spot-canvas.d \
        target/release/.fingerprint/spot-canvas-* \
        target/release/deps/spot_canvas-* target/release/deps/libspot_canvas-* \
        target/release/deps/spot_canvas_* target/release/deps/libspot_canvas_*

# 4. The sources (the service's src/ and the workspace's crates/): Tailwind scans templates/, web/
#    and src/web/ for class names, askama compiles templates/ into the binary, sqlx::migrate!
#    embeds migrations/.
COPY tailwind.config.js tsconfig.json ./
COPY web/ web/
COPY templates/ templates/
COPY migrations/ migrations/
COPY static/ static/
COPY crates/ crates/
COPY src/ src/
RUN npm run build
RUN cargo build --release --locked

FROM debian:bookworm-slim AS runtime
# ca-certificates for TLS to Coinbase and Cloud SQL; curl for the HEALTHCHECK only; tini as
# PID 1 so that the processes the service's children leave behind are reaped (the service
# empties each child's process group on stop and waits for it to be gone).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 spot \
    && useradd --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin spot \
    && install -d -o 10001 -g 10001 -m 0750 /tmp/spot-canvas
WORKDIR /app
COPY --from=nats /usr/local/bin/nats-server /usr/local/bin/nats-server
# Migrations and templates are compiled into the binary; only the built assets are files.
COPY --from=builder /build/static/ /app/static/
COPY --from=builder /build/target/release/spot-canvas /usr/local/bin/spot-canvas

# Cloud Run injects PORT (8080 unless the service says otherwise). DATA_DIR only holds the
# embedded nats-server's store when NATS_URL is unset.
ENV PORT=8080 \
    STATIC_DIR=/app/static \
    DATA_DIR=/tmp/spot-canvas \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# Shell form so that ${PORT} is expanded when the check runs. Cloud Run ignores HEALTHCHECK and
# uses the probes in deploy/*.yaml instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/health/live" || exit 1
# tini forwards SIGTERM to the service alone: the service stops its own children in order.
ENTRYPOINT ["/usr/bin/tini", "--", "spot-canvas"]
CMD ["serve"]
