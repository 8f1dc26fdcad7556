"""The cluster simulator: GPU-cluster traces replayed through the scheduling engine."""
