"""Serving: the model package, the one inference core (``Predictor``), the prediction log and
the BentoML service around them."""
