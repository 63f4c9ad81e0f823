"""Serving over HTTP: the BentoML service around the ``Predictor`` and the Bento build."""
