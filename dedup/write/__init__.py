"""The write stage (stage): the deduplicated WebDataset, original bytes copied as tar blocks, the
ledger that accounts for every input sample (ledger) and the checker of its invariants (verify)."""
