# segate in a container: Debian bookworm + Python 3.11, serving /srv/storage on :8443.
# Mount a config and its certificates at /etc/segate (see README: configuration).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends openssl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/segate
COPY pyproject.toml README.md ./
COPY segate ./segate
RUN pip install --no-cache-dir .
RUN useradd --system --home /var/lib/segate segate \
    && mkdir -p /srv/storage /var/lib/segate && chown segate /srv/storage /var/lib/segate
USER segate
ENV SEGATE_STATE=/var/lib/segate SEGATE_DATA=/srv/storage
EXPOSE 8443
ENTRYPOINT ["segate"]
CMD ["serve", "--config", "/etc/segate/segate.toml"]
