"""`opsloop eval <name>`: each module here exposes ``add_arguments(parser)`` and ``main(args) -> int``."""
