"""Request logs (JSON Lines, Parquet, CloudTrail) read as Arrow record batches, to replay them against policies."""
from .readers import MalformedRecord, Problems, read_requests, write_requests_parquet

__all__ = ["MalformedRecord", "Problems", "read_requests", "write_requests_parquet"]
