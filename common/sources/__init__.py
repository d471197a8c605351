"""The marketplaces and storefronts listings come from (`registry`): each owns its listings."""
