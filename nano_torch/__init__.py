"""PyTorch backend of nano. Without the framework installed, importing it says so in one line."""
try:
    import torch  # noqa: F401
except ImportError as error:
    from nano_core.host import missing_framework

    missing_framework("torch", error)
