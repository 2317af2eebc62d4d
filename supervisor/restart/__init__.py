"""Keeping a runner id served: restarts under a policy, groups, recycling, replacement."""
