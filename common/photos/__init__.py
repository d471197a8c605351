"""Untrusted photo bytes → a checked photo: failure reasons, fetching, decoding."""
