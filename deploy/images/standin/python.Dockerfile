# STAND-IN for python:3.11-slim, built by deploy/images/build-standins.sh where no image
# registry answers. Debian bookworm's Python 3.11 in a virtual environment whose bin/ is first
# on PATH, so `python`, `python3` and `pip` are where the official image has them and pip
# installs as root without Debian's "externally managed" refusal.
FROM tunebus-standin/debian:bookworm
# The build machine's CA bundle: its egress to PyPI may go through a TLS-inspecting proxy.
COPY ca-certificates.crt /tmp/host-ca.crt
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && cp /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt && rm /tmp/host-ca.crt \
    && python3 -m venv /opt/python \
    && /opt/python/bin/pip install -q --no-cache-dir --disable-pip-version-check --upgrade pip
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.tunebus.standin="python:3.11-slim from Debian bookworm packages; NOT the official image"
CMD ["python3"]
