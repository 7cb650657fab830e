"""The evaluation steps: `benchmark` (the phantom evaluation set), `judge` (the generation judge) and
`evaluate` (metrics.json, plots, HTML report). `schema` is the evaluate -> promote contract."""
