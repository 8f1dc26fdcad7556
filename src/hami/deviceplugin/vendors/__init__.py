"""Each vendor's node side: discovery backends, registration, what a container gets."""
