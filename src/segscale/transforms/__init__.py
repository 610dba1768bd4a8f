"""Pure transforms: DataFrames and plain values in, one DataFrame out; no I/O, no session, no config files.
The pipeline (`segscale.pipeline`) wires them between the reads and the writes."""
