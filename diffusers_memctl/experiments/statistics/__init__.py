"""Statistics over experiment result rows: correlations with intervals (:mod:`.analysis`), replicate-level
intervals and contrasts (:mod:`.replicates`), Holm families (:mod:`.multiple_testing`) and a study's analysis
(:mod:`.studies`)."""
