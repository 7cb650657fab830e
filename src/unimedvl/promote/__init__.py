"""Registry and promotion: the MLflow model version (pyfunc over the served predictor, lineage tags),
the promotion gates, the GitOps staging overlay, the audit log and the model card."""
