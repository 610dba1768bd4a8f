"""Everything that touches storage: the input reader (`inputs`) and the Delta tables (`delta`)."""
