# spanpulse job image: `docker build -t spanpulse:local .`
# Two stages so the runtime image carries wheels only, no build tooling or sources.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Non-root user; the volume mount points exist and belong to it, so fresh named volumes
# inherit that ownership.
RUN useradd --system --uid 10001 --home-dir /var/lib/spanpulse --create-home spanpulse \
    && mkdir -p /var/lib/spanpulse/recovery /var/lib/spanpulse/rollups /etc/spanpulse \
    && chown -R spanpulse:spanpulse /var/lib/spanpulse
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER spanpulse
WORKDIR /var/lib/spanpulse
VOLUME ["/var/lib/spanpulse/recovery", "/var/lib/spanpulse/rollups"]
EXPOSE 9464
ENTRYPOINT ["spanpulse"]
CMD ["run", "--config", "/etc/spanpulse/spanpulse.toml"]
