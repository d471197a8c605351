# Stand-in for the official redis:7 image, from Debian's redis-server (7.0): the same contract
# (`redis-server ...` as the command, port 6379, redis-cli for the healthcheck).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]
CMD ["redis-server"]
