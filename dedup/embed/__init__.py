"""The embed stage (stage): per shard, an embedding from the chosen embedder (embedders), exact and
perceptual hashes (hashing) and, for copy detection, local keypoint descriptors (localfeatures)."""
