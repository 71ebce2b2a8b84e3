"""Retrieval over the organisation's documents: ingest (many formats), Korean sentence chunks,
a keyword index over morphemes in the shared SQLite store, and search."""
