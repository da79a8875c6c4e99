"""runferry's ground floor: the run model, the error tree and the adapter protocols.

Everything else (engine, adapters, bench) builds on this package; it imports nothing of ours, so
dependencies run one way only (``tests/test_layers.py`` checks it).
"""
