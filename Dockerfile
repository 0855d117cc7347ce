# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
# Build: docker build -t kshift .
# Run:   docker run -p 9092:9092 -v $PWD/config:/etc/kshift kshift serve --config /etc/kshift/kshift.toml
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY vendor vendor
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin kshift && strip target/release/kshift

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home kshift
COPY --from=build /src/target/release/kshift /usr/local/bin/kshift
COPY config/kshift.toml /etc/kshift/kshift.toml
USER kshift
EXPOSE 9092
# Needs [proxy] admin_listen = "127.0.0.1:9644" (as in the bundled config).
HEALTHCHECK --interval=10s --timeout=3s CMD ["kshift", "health", "--admin", "http://127.0.0.1:9644"]
ENTRYPOINT ["/usr/local/bin/kshift"]
CMD ["serve", "--config", "/etc/kshift/kshift.toml"]
