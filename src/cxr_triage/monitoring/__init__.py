"""Drift monitoring: the monitoring features of an image and Evidently reports on them."""
