# Multi-stage: build the virtualenv in one stage, run as a non-root user in a slim one.
# The image runs exactly what `make run` runs: the commands of the Procfile, with the venv at .venv.
FROM python:3.11-slim AS build
WORKDIR /app
COPY requirements.txt .
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install --no-cache-dir --upgrade pip \
 && /app/.venv/bin/pip install --no-cache-dir -r requirements.txt

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH="/app/.venv/bin:$PATH"
# a container is reached through its published ports: listen on every interface of its network
ENV BIND_HOST=0.0.0.0
RUN useradd --create-home --uid 10001 cryptoflow
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY --chown=cryptoflow:cryptoflow . /app
RUN mkdir -p /app/var/prometheus && chown -R cryptoflow:cryptoflow /app/var
USER cryptoflow
EXPOSE 8000 5555
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT','8000'), timeout=4)"
CMD [".venv/bin/gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
