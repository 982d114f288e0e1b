# consenter-host as a Fabric orderer image: the release binary on a slim
# Debian base, run as a non-root user, configured like Fabric's orderer
# image (FABRIC_CFG_PATH holds orderer.yaml; ORDERER_* variables override
# it). README "Running it like a Fabric orderer" documents every line;
# tests/container.rs checks that they agree.

# Build stage: the toolchain pinned by rust-toolchain.toml (stable, with the
# wasm32-wasip2 target the shipped solo plugin is built for).
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The commit /version reports (docker build --build-arg CONSENTER_COMMIT_SHA=$(git rev-parse HEAD)).
ARG CONSENTER_COMMIT_SHA=""
ENV CONSENTER_COMMIT_SHA=${CONSENTER_COMMIT_SHA}
RUN rustup show active-toolchain && rustup target add wasm32-wasip2 \
 && cargo build --release --locked -p consenter-host --bin consenter-host \
 && strip target/release/consenter-host

# Runtime stage.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 orderer \
 && useradd --system --uid 10001 --gid orderer --home-dir /var/hyperledger --shell /usr/sbin/nologin orderer \
 && mkdir -p /etc/hyperledger/fabric/msp /etc/hyperledger/fabric/tls /var/hyperledger/production/orderer \
 && chown -R orderer:orderer /var/hyperledger /etc/hyperledger/fabric
COPY --from=build /src/target/release/consenter-host /usr/local/bin/consenter-host
COPY --chown=orderer:orderer docker/orderer.yaml /etc/hyperledger/fabric/orderer.yaml

ENV FABRIC_CFG_PATH=/etc/hyperledger/fabric
ENV ORDERER_GENERAL_LISTENADDRESS=0.0.0.0
ENV ORDERER_GENERAL_LISTENPORT=7050
ENV ORDERER_GENERAL_LOCALMSPDIR=/etc/hyperledger/fabric/msp
ENV ORDERER_GENERAL_LOCALMSPID=OrdererMSP
ENV ORDERER_GENERAL_BOOTSTRAPMETHOD=none
ENV ORDERER_FILELEDGER_LOCATION=/var/hyperledger/production/orderer
ENV ORDERER_CHANNELPARTICIPATION_ENABLED=true
ENV ORDERER_OPERATIONS_LISTENADDRESS=0.0.0.0:9443
ENV ORDERER_METRICS_PROVIDER=prometheus

USER orderer
VOLUME ["/var/hyperledger/production/orderer", "/etc/hyperledger/fabric/msp"]
EXPOSE 7050 7053 9443
ENTRYPOINT ["/usr/local/bin/consenter-host"]
CMD ["start"]
