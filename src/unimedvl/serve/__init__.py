"""The model server: the KServe model server (v1 and v2 / Open Inference Protocol) in front of one
UniMedVL model folder. `engine` runs the tasks in-process (the pyfunc flavour and the benchmark call
it too), `schemas` turns both protocols into one validated request type, `predictor` is the
`kserve.Model`, `server` builds the REST server on loopback."""
