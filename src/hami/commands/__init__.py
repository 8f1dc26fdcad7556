"""The `hami` subcommands, one module each."""
