# syntax=docker/dockerfile:1
#
# The treeai image: a release build of the `treeai` binary (package `treeai`,
# bin/), stripped, on a distroless runtime with no shell, running as the
# non-root user 65532. The debug info is split off into its own stage.
#
#   docker build -t treeai:dev .                                  # the image
#   docker build --target debug --output type=local,dest=out/debug .  # treeai.debug
#   docker run --rm -p 6875:6875 -p 8080:8080 treeai:dev run      # embedded default
#
# Needs BuildKit (default in Docker 23+) for the cache mounts. The build
# command is the one the project's scripts use: cargo build --release
# --locked -p treeai. deploy/README.md, "Image", says more.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- builder: compile and strip ---------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# LIBZ_SYS_STATIC: link zlib (librdkafka's) statically; the distroless
# runtime has no libz. OPENSSL_STATIC: link OpenSSL (librdkafka's TLS and
# SASL, from the builder's libssl-dev) statically too, so the binary needs
# only glibc, libgcc and libstdc++ (checked below).
ENV CARGO_TERM_COLOR=never \
    CARGO_TARGET_DIR=/src/target \
    LIBZ_SYS_STATIC=1 \
    OPENSSL_STATIC=1
# rust:*-bookworm already has gcc, g++, make, perl, python3 and libssl-dev,
# which librdkafka's bundled build (rdkafka-sys) needs.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p treeai \
 && mkdir -p /out \
 && cp target/release/treeai /out/treeai
# Split the debug info off (kept in the `debug` stage for crash analysis),
# strip the binary, and link the two by a .gnu_debuglink (gdb finds
# treeai.debug beside the binary or under /usr/lib/debug). Then check that
# the binary needs no shared library beyond the runtime's glibc, libgcc and
# libstdc++ (fail here, not at start), and that it runs.
RUN cd /out \
 && objcopy --only-keep-debug treeai treeai.debug \
 && objcopy --strip-all --add-gnu-debuglink=treeai.debug treeai \
 && ls -l treeai treeai.debug \
 && ldd treeai \
 && ! ldd treeai | grep -v -E 'linux-vdso|ld-linux|lib(c|m|dl|rt|pthread|gcc_s|stdc\+\+)\.so' \
 && ./treeai --version \
 && mkdir -p /out/workdir

# --- debug: the split-off debug info only -------------------------------------
FROM scratch AS debug
COPY --from=builder /out/treeai.debug /treeai.debug

# --- runtime -------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/treeai /usr/local/bin/treeai
# The working directory: ./lake, ./checkpoints and ./data of a plain
# `docker run` land here (on Kubernetes it is an emptyDir and the lake and
# checkpoints are on the object store).
COPY --from=builder --chown=65532:65532 /out/workdir /var/lib/treeai
WORKDIR /var/lib/treeai
USER 65532:65532
# Listen on all interfaces inside the container (the binary's default is
# 127.0.0.1, unreachable through a published port).
ENV TREEAI_SQL_ADDR=0.0.0.0:6875 \
    TREEAI_HTTP_ADDR=0.0.0.0:8080
# 6875 Postgres wire, 8080 HTTP (/v1/sql, /metrics, /healthz, /readyz),
# 2101 timely peer links (deploy/base: headless Service treeai-peers).
EXPOSE 6875 8080 2101
ENTRYPOINT ["/usr/local/bin/treeai"]
CMD ["run"]
