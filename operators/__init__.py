"""Neural operators and constraint layers (plain library: no Prefect or MLflow imports)."""
