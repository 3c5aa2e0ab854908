# syntax=docker/dockerfile:1.7
# The one `tke-resilience` binary (eklet, admission, scheduler-extender, cloudsim, explain) in a
# distroless image that runs as UID 65532.
#
# The binary is fully static (x86_64/aarch64-unknown-linux-musl): rustls with ring needs no system
# OpenSSL, and a static binary runs on distroless/static, which has no libc. Built natively for the
# platform being built (use `docker buildx build --platform linux/amd64,linux/arm64` for both).
#
#   docker build -t tke-resilience:dev .

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles ring's C and assembly for the musl target.
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    cargo build --release --locked --target "$target" -p tke-resilience --bin tke-resilience; \
    install -D -m 0755 "target/$target/release/tke-resilience" /out/tke-resilience; \
    # Fails the build if anything links dynamically.
    if ldd /out/tke-resilience 2>/dev/null | grep -q '=>'; then echo "not static" >&2; exit 1; fi

# distroless/static: CA certificates (for the Tencent Cloud API over HTTPS), /etc/passwd with the
# nonroot user, nothing else.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tke-resilience /usr/local/bin/tke-resilience
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tke-resilience"]
