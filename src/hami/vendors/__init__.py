"""One module per device vendor: resource names, request parsing, Allocate environment."""
