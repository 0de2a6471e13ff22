"""Monitoring helpers: a local Prometheus for `splitgpt up --monitoring` and the tests.

The Prometheus jobs, metric names and alerts are the same everywhere (docs/metrics.md,
prometheus/prometheus.yml, prometheus/alerts.yml): only how targets are found differs.
"""
