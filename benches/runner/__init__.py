"""The side-by-side macro benchmark runner behind benches/run.py (stdlib only)."""
