"""Content-addressed artifact storage (see ``base.py`` for the contract)."""
