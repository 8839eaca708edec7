"""Prunable groups, the exact cost model and real pruning (``pruning`` is the only torch-pruning importer)."""
