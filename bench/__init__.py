"""Benchmarks for procore-photo-sync: `make bench`, `make bench-quick`."""
