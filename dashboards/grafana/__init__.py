"""The Grafana dashboard over infermeter's Prometheus series (``infermeter.json``)."""
