class AnnotationError(ValueError):
    """An annotation value that does not follow HAMi's format."""
