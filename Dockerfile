# The gateway image: one process serving FHIR/HTTP (8080) and MLLP (2575).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY mappings ./mappings
COPY profiles ./profiles
RUN pip install --no-cache-dir -e .
ENV GATEWAY_HOST=0.0.0.0
EXPOSE 8080 2575
CMD ["gateway", "serve"]
