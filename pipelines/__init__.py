"""The Kubeflow pipeline (`unimedvl.py`), its compiled YAML (`compiled/`) and the Argo variant (`argo.py`)."""
