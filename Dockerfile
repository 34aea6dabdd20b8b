# Rafter's controller image: built where a container registry exists (this repository's CI has
# none, see the README). The binary links only glibc, libm and libgcc_s (TLS is rustls), so the
# runtime is distroless/cc: no shell, no package manager, UID 65532 (`nonroot`).
#
#   docker build -t <registry>/rafter:0.1.0 .
#   helm install rafter deploy/helm/rafter --set image.repository=<registry>/rafter ...

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rafter-actors --bin rafter \
 && cp target/release/rafter /rafter

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /rafter /usr/local/bin/rafter
# The chart mounts an emptyDir at /tmp and makes the root filesystem read-only; Rafter writes
# nothing else (actors/tests/image.rs runs the binary so).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rafter"]
CMD ["run"]
