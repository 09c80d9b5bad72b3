"""Evaluation: metrics in physical units, event-level scores, plots, transfer matrix."""
