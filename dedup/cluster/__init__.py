"""The cluster stage (stage): candidate pairs from the embedding search (search), verified by aligned
pixels (copydetect), decided by one PairOracle and grouped (grouping), one representative per group by
a stated policy (representatives); scored against planted truth (evaluate)."""
