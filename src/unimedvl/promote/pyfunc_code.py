"""Models-from-code entry of the pyfunc flavour (see pyfunc.py)."""

import mlflow

from unimedvl.promote.pyfunc import UniMedVLPyfunc

mlflow.models.set_model(UniMedVLPyfunc())
