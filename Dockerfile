# Multi-stage build: compile with the Rust toolchain, run on a slim Debian
# with only the binary, the status page and curl (for the health check).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY static static
COPY tests tests
COPY benches benches
RUN cargo build --release --locked --bin seckill

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 seckill
COPY --from=build /src/target/release/seckill /usr/local/bin/seckill
COPY static /app/static
ENV STATIC_DIR=/app/static \
    LISTEN=0.0.0.0:8080 \
    LOG_FORMAT=json
USER seckill
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --retries=6 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["seckill"]
CMD ["serve"]
