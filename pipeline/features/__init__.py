"""Features: point-in-time history, text embeddings, the fitted feature state and the tensors models read.
`build.build_features` writes a run's feature files; `build.transform` rebuilds the same columns at serving."""
