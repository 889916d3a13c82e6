"""HTTP serving: `encoderforge serve` (app, dynamic batcher, metrics, server)."""
