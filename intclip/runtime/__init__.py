"""Where and how tensors run: processes (DDP), autocast precision, compile and memory format."""
