"""Reports: figures by domain and the Markdown a person reads.

- :mod:`.figures`: shared figure helpers (new figure, PNG writer);
- :mod:`.runs`: one run's figures (nearest neighbours, PCA, loss history, signals);
- :mod:`.gradient_profiles`: a gradient profile's figures;
- :mod:`.sweeps` and :mod:`.studies`: a sweep's and a study's figures;
- :mod:`.frontier`: the matched-quality frontier's report text, figure and plain answer;
- :mod:`.markdown`: the one writer of a sweep's and a study's ``REPORT.md``;
- :mod:`.cards`: model cards of runs and sweeps.

matplotlib is imported inside the plotting functions; every figure function returns a `matplotlib.figure.Figure`
built with the object API (no pyplot state, nothing shown).
"""
