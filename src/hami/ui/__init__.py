"""`hami ui`: server-rendered pages over the scheduler's view of the cluster (see docs/ui.md)."""
