"""Metrics, calibration, comparison, threshold selection, fairness."""
