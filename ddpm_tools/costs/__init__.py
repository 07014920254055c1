"""The KL cost table: estimating every step's cost from one pass of network calls
(:mod:`.estimate`), building, resuming, sharding, merging and caching it (:mod:`.build`),
and its file format (:mod:`.table_file`)."""
