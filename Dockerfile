FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=7860
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /app/data && chown app /app/data
COPY *.py ./
COPY api/ api/
COPY drawing/ drawing/
COPY siliconflow/ siliconflow/
COPY storage/ storage/
COPY core/ core/
COPY static/ static/
USER app
# Kept pictures (DATA_DIR defaults to data/ under the working directory): mount a named volume
# here to keep them across container replacements (docker run -v sfdata:/app/data ...).
VOLUME /app/data
EXPOSE 7860
# The same command as the Procfile's web process.
CMD ["sh", "-c", "exec gunicorn siliconflow_proxy:app --bind 0.0.0.0:${PORT:-7860}"]
