"""Evaluation: metrics in physical units, event-level scores, conformal intervals and
the windows that calibrate them (``calibration``), plots, the transfer matrix's tables
(``labquake evaluate`` is ``jobs.evaluate``)."""
