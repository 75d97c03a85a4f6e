# STAND-IN for mcr.microsoft.com/azure-storage/azurite, built by deploy/images/build-standins.sh
# where no image registry answers. Debian bookworm's Node.js with Azurite from npm, its
# commands (azurite, azurite-blob, ...) on PATH as in the official image.
FROM tunebus-standin/debian:bookworm AS build
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
# After apt: installing ca-certificates regenerates the bundle. The build machine's bundle:
# its egress to npm may go through a TLS-inspecting proxy.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ARG AZURITE_VERSION
RUN test -n "$AZURITE_VERSION" \
    && npm install --prefix /opt/azurite --cafile /etc/ssl/certs/ca-certificates.crt --omit=dev \
        --no-audit --no-fund --loglevel=error "azurite@${AZURITE_VERSION}"

FROM tunebus-standin/debian:bookworm
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/azurite /opt/azurite
ENV PATH=/opt/azurite/node_modules/.bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /opt/azurite
EXPOSE 10000 10001 10002
LABEL org.tunebus.standin="Azurite from npm on Debian bookworm's Node.js; NOT the official image"
CMD ["azurite", "-l", "/data", "--blobHost", "0.0.0.0", "--queueHost", "0.0.0.0", "--tableHost", "0.0.0.0"]
