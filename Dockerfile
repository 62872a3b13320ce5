FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATCHSEEK_DATA_DIR=/data
COPY pyproject.toml README.md alembic.ini ./
COPY patchseek ./patchseek
COPY migrations ./migrations
# Editable install keeps migrations/ next to the package, where the app finds them.
RUN pip install -e ".[cpu,colpali,ocr,postgres]"
VOLUME /data
EXPOSE 8000
CMD ["patchseek", "serve", "--host", "0.0.0.0", "--port", "8000"]
