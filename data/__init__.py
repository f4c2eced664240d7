"""Alpaca data: templates, loading, tokenization, collation, sampling (docs/DATA.md)."""
