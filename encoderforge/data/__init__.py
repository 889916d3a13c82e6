"""Data: corpus preparation to token shards, sequence packing, MLM masking."""
