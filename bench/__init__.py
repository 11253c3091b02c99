"""Benchmarks of the harness itself (not tests): ``python -m bench`` runs the whole suite
(``bench/run_all.py``); each ``bench/<name>.py`` also runs alone as ``python -m bench.<name>``."""
