"""Locust load scenarios: registrants arriving on a scenario's curve (open model)."""
