"""Throughput and hardware-efficiency benchmarks for keras_gmlp (`python -m benchmarks.run`)."""
