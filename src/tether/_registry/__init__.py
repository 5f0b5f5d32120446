"""The registry use cases: log, resolve, load, promote, roll back, compare, audit."""
