# STAND-IN for python:3.11-slim, built by deploy/images/build-standins.sh where no image
# registry answers. The official image's layout: CPython 3.11 under /usr/local, `python`,
# `python3` and `pip` in /usr/local/bin, pip installing into its site-packages.
# The interpreter is this machine's CPython 3.11 (its standard library, no site-packages), not
# Debian's: bookworm's 3.11.2 predates tarfile's extraction filters (3.11.4), which tunebus uses.
FROM tunebus-standin/debian:bookworm
# The shared libraries the interpreter and its extension modules link against.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ca-certificates \
        libssl3 libffi8 libsqlite3-0 libbz2-1.0 liblzma5 zlib1g libreadline8 libncursesw6 libtinfo6 \
        libuuid1 libgdbm6 libgdbm-compat4 libexpat1 libtirpc3 libnsl2 libcrypt1 \
    && rm -rf /var/lib/apt/lists/*
# After apt (installing ca-certificates regenerates the bundle): the build machine's bundle, as
# its egress to PyPI may go through a TLS-inspecting proxy.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY cpython/ /usr/local/
RUN ldconfig \
    && ln -s python3.11 /usr/local/bin/python3 && ln -s python3.11 /usr/local/bin/python \
    && python3.11 -m ensurepip --default-pip >/dev/null \
    && pip --version \
    && python -c "import bz2, ctypes, lzma, readline, sqlite3, ssl, uuid, zlib, tarfile; tarfile.data_filter"
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.tunebus.standin="python:3.11-slim from this machine's CPython 3.11 on Debian bookworm; NOT the official image"
CMD ["python3"]
