"""Moderators: accounts, the review queue and decisions, history and stats, labels."""
