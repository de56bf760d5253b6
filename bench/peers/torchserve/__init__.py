"""TorchServe 0.12 (stateful handler, sequence batching) serving the bench GRU."""
