"""Delta tables: the store every read and write goes through (`store`), the table log and layout (`log`), and the
two writer backends (`rs_writer`, `spark_writer`)."""

from segscale.io.delta.log import CommitMetadata, TableVersion, WriteResult, absolute_uri, open_table
from segscale.io.delta.store import DeltaStore, Warehouse

__all__ = ["CommitMetadata", "DeltaStore", "TableVersion", "Warehouse", "WriteResult", "absolute_uri", "open_table"]
