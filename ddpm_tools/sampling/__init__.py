"""Drawing samples along a schedule (:mod:`.ancestral`) and the samples file
(:mod:`.sample_file`)."""
