"""Datasets: synthetic generator, ingestion, preprocessing, splitting."""
