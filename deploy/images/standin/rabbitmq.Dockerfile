# STAND-IN for rabbitmq:3.13-management, built by deploy/images/build-standins.sh where no image
# registry answers. Debian bookworm's rabbitmq-server (3.10) with the plugins the compose file
# enables, run the way the official image runs it: as user rabbitmq, node rabbit@<hostname>,
# data in /var/lib/rabbitmq, settings from /etc/rabbitmq/conf.d/*.conf and
# /etc/rabbitmq/enabled_plugins, logs on the console.
FROM tunebus-standin/debian:bookworm
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /etc/rabbitmq/conf.d \
    # The official image's defaults (its 10-defaults.conf): guest may log in over the network.
    && printf '%s\n' 'loopback_users.guest = false' 'listeners.tcp.default = 5672' \
        'management.tcp.port = 15672' >/etc/rabbitmq/conf.d/10-defaults.conf \
    && : >/etc/rabbitmq/rabbitmq-env.conf \
    && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
# /usr/lib/rabbitmq/bin holds the real scripts; /usr/sbin's are wrappers that `su` to rabbitmq.
ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/rabbitmq \
    LANG=C.UTF-8 \
    RABBITMQ_CONFIG_FILES=/etc/rabbitmq/conf.d \
    RABBITMQ_ENABLED_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins
USER rabbitmq
EXPOSE 5672 15672
LABEL org.tunebus.standin="rabbitmq:3.13-management from Debian bookworm's rabbitmq-server 3.10; NOT the official image"
CMD ["rabbitmq-server"]
