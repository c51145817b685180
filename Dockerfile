# oddscache container image: `docker build -t oddscache:0.1.0 .`
#
# Stage 1 builds the release binary with the exact command CI runs
# (scripts/check-deploy): `cargo build --release --locked`. Stage 2 is
# distroless/cc (glibc and libgcc, no shell, no package manager) running as
# its built-in non-root user 65532, with the binary as entrypoint.

# The toolchain CI builds with; scripts/check-deploy checks that every
# locked crate's rust-version allows it (some need 1.89, as Cargo.toml's
# rust-version).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a source change does not rebuild
# them. The dummy targets only exist to let cargo resolve and compile deps.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/deps/oddscache* target/release/deps/liboddscache* \
      target/release/.fingerprint/oddscache-*
COPY config.toml ./
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/oddscache /out/oddscache

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/oddscache /usr/local/bin/oddscache
# The shipped defaults, so `docker run` works without a mount; in
# Kubernetes the ConfigMap is mounted over /etc/oddscache.
COPY --from=build /src/config.toml /etc/oddscache/config.toml
ENV ODDSCACHE_CONFIG=/etc/oddscache/config.toml
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/oddscache"]
