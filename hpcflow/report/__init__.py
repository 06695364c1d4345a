"""Report layer: what a run looks like to people (graph export; progress, status and the
HTML report come with later work)."""
