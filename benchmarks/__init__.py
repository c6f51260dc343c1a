"""Benchmarks that print their figures; the last line of each is a JSON object.

``python -m benchmarks`` runs all of them at a size that finishes in a few minutes;
``python -m benchmarks.<name> --help`` runs one, at any size.
"""
