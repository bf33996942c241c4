# The runtime image: the statically linked `porchlight` and nothing else.
# Built by scripts/image.sh from a context it prepares (the binary, /etc
# with the non-root user, an empty /data owned by it); the top-level
# Dockerfile ends in the same stage.
FROM scratch
COPY etc/ /etc/
COPY --chown=65532:65532 data/ /data/
COPY porchlight /porchlight
USER 65532:65532
# The data directory is the one thing written: a volume, so the root
# filesystem can be read-only (`docker run --read-only`, Kubernetes
# readOnlyRootFilesystem).
VOLUME ["/data"]
ENV PORCHLIGHT_DATA_DIR=/data \
    PORCHLIGHT_LOG_FORMAT=json
# Ports, by name: mqtt 1883, mqtts 8883 (--tls-listen), ws 8083
# (--ws-listen), wss 8084 (--wss-listen), admin 9883 (probes, /metrics,
# the admin API).
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
