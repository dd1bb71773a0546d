"""Benchmarks and the large synthetic data they run on (not a Django app).

Run a script from the repository root, e.g. ``.venv/bin/python bench/generate.py --customers 1000000 --orders
10000000``; other benchmarks import ``bench.generate.generate`` to load their data. Every benchmark prints its
figure beside a raw baseline measured in the same process, and docs/benchmarks.md records the results.
"""
