"""The download stage: URL lists (urllist) through img2dataset into WebDataset shards (stage), or
images already on disk imported into the same layout (ingest); resizer and the local HTTP server
(serve) that the demo and the tests download from."""
