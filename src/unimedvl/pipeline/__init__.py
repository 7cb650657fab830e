"""The Kubeflow side of the platform, as library code that runs inside the components' containers.

`params` turns a KFP form (component parameters named after params.yaml keys + `params_override`)
into the same validated `Params` the CLI and DVC read; `steps` adapts KFP artefacts to the step
library functions; `data_version` resolves DVC-tracked outputs at a git rev; `rayjob` submits and
watches the KubeRay RayJobs of the training stages; `submit` talks to a KFP or Argo server.
The DAG itself is `pipelines/` and the component declarations are `components/` at the repo root.
"""
