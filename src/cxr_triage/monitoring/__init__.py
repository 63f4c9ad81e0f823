"""Drift monitoring: Evidently reports comparing current monitoring features with the reference."""
