"""Real samples: the durable store, the ratio samplers, one worker's generator, generation on Tune."""
