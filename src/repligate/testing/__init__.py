"""Shipped test helpers: tiny random-weight pipelines built offline from configs, so the
real loading and calling code runs without a GPU or a model hub."""
