"""From an embedding to a category: the scoring model, its fitting, the policy, the rows."""
