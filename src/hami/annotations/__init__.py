"""HAMi's wire formats: the annotations that nodes and pods carry, with encode and decode."""

from hami.annotations.errors import AnnotationError

__all__ = ["AnnotationError"]
