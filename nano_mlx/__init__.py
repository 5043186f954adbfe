"""MLX backend of nano. Without the framework installed, importing it says so in one line."""
try:
    import mlx.core  # noqa: F401
except ImportError as error:
    from nano_core.host import missing_framework

    missing_framework("mlx", error)
