"""Model construction helpers (the tiny local model used by the demo and the tests)."""
