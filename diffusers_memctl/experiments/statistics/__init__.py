"""Statistics over experiment result rows: correlations with intervals (:mod:`.analysis`), replicate-level
intervals and contrasts (:mod:`.replicates`), Holm families (:mod:`.multiple_testing`), a study's analysis
(:mod:`.studies`) and the matched-quality frontier's numbers (:mod:`.frontier`)."""
