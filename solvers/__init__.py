"""Linear, ODE and optimization solvers (plain library: no Prefect or MLflow imports)."""
