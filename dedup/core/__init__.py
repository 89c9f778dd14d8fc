"""What every stage shares: typed config (config), the work directory's paths and atomic writes
(layout), completion markers (markers), one-line user errors (errors), the stage contract (stage) and
its executors (executors), tar shards (shards), optional extras (optional), and what other packages
add by entry point (extensions)."""
