#!/bin/sh
# One PostgreSQL instance, two databases: Prefect's and MLflow's (owned by POSTGRES_USER).
# Runs once, when the data volume is first initialised (docker-entrypoint-initdb.d).
set -eu
for db in prefect mlflow; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -tc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
    || psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE $db"
done
