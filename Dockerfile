# The operator image the chart's controllerManager.image names: `ido` as the entrypoint
# (the Deployment passes `operator …`, importer Jobs `import …`), run as the chart's
# non-root user (65532) on a read-only root filesystem; no shell, no package manager.
#
#   docker build -t ghcr.io/ido-dev/ido:0.1.0 .      (or: buildah bud -t … .)
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ido --bin ido \
 && install -D -m 0755 target/release/ido /out/ido

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ido /usr/local/bin/ido
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ido"]
