"""``fedintent bench``: accuracy against epsilon for federated DP training and its baselines."""
