"""Building and reading WebDataset shard folders (``mmfm shards build|inspect``).

Light to import: heavy work (PIL, multiprocessing, downloads) lives in the sub-modules.
"""
from .manifest import FORMAT, MANIFEST, ShardError, read_manifest, shard_paths
from .writer import ShardSink, encode_sample, write_shards

__all__ = ["FORMAT", "MANIFEST", "ShardError", "ShardSink", "encode_sample", "read_manifest", "shard_paths",
           "write_shards"]
