"""Data in: the raw contract (schema), ingestion into staging, validation (GX suites + contract rules) and
publication into the lake, dataset adapters and the synthetic shop generator. Imports nothing heavy."""
