"""The review app: moderators' pages and the HTTP API for marketplaces and moderators."""
