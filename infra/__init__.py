"""Deployment and set-up files (prefect.yaml, setup.sh); importable so package data ships."""
