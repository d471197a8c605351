"""Route modules of the review app, one per concern."""
