"""One module per measure; each registers itself with `bench.registry.measure`."""
