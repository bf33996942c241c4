# syntax=docker/dockerfile:1
# Porchlight's container image, where base images can be pulled (the Rust
# toolchain is the one the tree is built and tested with here):
#   docker build --build-arg PORCHLIGHT_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t porchlight .
# The runtime stage is docker/runtime.Dockerfile's; scripts/image.sh builds
# the same image on a machine without base images or a registry.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG PORCHLIGHT_GIT_COMMIT=unknown
ENV PORCHLIGHT_GIT_COMMIT=${PORCHLIGHT_GIT_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p porchlight-broker --bin porchlight \
 && mkdir -p /out/etc /out/data \
 && cp target/x86_64-unknown-linux-musl/release/porchlight /out/porchlight \
 && echo 'porchlight:x:65532:65532:porchlight:/data:/sbin/nologin' > /out/etc/passwd \
 && echo 'porchlight:x:65532:' > /out/etc/group

FROM scratch
COPY --from=build /out/etc/ /etc/
COPY --from=build --chown=65532:65532 /out/data/ /data/
COPY --from=build /out/porchlight /porchlight
USER 65532:65532
VOLUME ["/data"]
ENV PORCHLIGHT_DATA_DIR=/data \
    PORCHLIGHT_LOG_FORMAT=json
LABEL org.opencontainers.image.title="porchlight" \
      org.opencontainers.image.description="Porchlight MQTT broker" \
      io.porchlight.ports="mqtt=1883/tcp,mqtts=8883/tcp,ws=8083/tcp,wss=8084/tcp,admin=9883/tcp"
EXPOSE 1883/tcp 8883/tcp 8083/tcp 8084/tcp 9883/tcp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/porchlight"]
# The listeners as arguments, not environment, so arguments given to the
# container (Kubernetes `args`) replace them whole: `--no-tcp-listen` and
# `--no-admin-listen` then work without conflicting with a variable.
CMD ["--listen", "0.0.0.0:1883", "--admin-listen", "0.0.0.0:9883"]
