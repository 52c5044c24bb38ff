"""Evaluation: metrics (checked against brute force in tests), the test-window evaluation of every model and the
champion, the pure gate decision, plots and the model card."""
