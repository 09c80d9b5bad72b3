"""Evaluation: metrics in physical units, event-level scores, conformal intervals, plots,
the transfer matrix's tables (``labquake evaluate`` is ``jobs.evaluate``)."""
