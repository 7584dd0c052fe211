"""Kite's agent core: pure Python, standard library only at import time.

Runs unchanged on CPython and under Pyodide. Platform specifics (crypto, transport, storage)
sit behind small interfaces with one implementation per runtime.
"""

__version__ = "0.1.0"
