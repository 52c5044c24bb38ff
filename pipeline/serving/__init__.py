"""Serving: the fused ranking score, the MLflow pyfunc that scores raw contract rows, and batch scoring of a
landing day with a registered model."""
