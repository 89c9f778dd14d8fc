"""What every stage shares: typed config (config), the work directory's layout and markers (layout),
one-line user errors (errors), the stage contract (stage) and its executors (executors), tar shards
(shards), optional extras (optional), and what other packages add by entry point (extensions)."""
