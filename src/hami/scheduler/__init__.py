"""The scheduler: a pure engine (state + schedule) and, around it, the extender's I/O shells."""
