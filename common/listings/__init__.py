"""Listings as marketplaces send them and as they may be read back."""
