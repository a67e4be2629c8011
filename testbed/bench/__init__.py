"""Benchmark segate against XRootD on this machine, in one run (issue #7).

``python -m testbed.bench [--quick] [--out DIR]``; see ``__main__.py`` for what is measured and
README.md "Performance" for the latest figures. Modules: ``servers`` (start both servers alike),
``measures`` (one figure each, by curl / ab / wrk), ``report`` (stats, JSON, PNG, summary).
"""
