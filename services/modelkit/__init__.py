"""What a model package implements, and the helpers it may use. The platform's only view of a model.

Model packages import from here (and ``services.errors``); the platform imports model packages
only by the import paths in its configuration (``discovery``). See ``package.ModelPackage``.
"""

from services.modelkit.datasets import DataRejected, Dataset, Split, read_numeric_csv, row_hashes
from services.modelkit.gates import Gate, GateContext, GateResult
from services.modelkit.inputs import (decode_gray, instances_from_columns, instances_matrix, invalid_instance,
                                     numeric_instance, rows, validate_instances)
from services.modelkit.package import ModelPackage, NoOptions, NoParams, Worker
from services.modelkit.tasks import Classification, Regression, Task
from services.modelkit.tensors import TensorSpec

__all__ = ["Classification", "DataRejected", "Dataset", "Gate", "GateContext", "GateResult", "ModelPackage",
           "NoOptions", "NoParams", "Regression", "Split", "Task", "TensorSpec", "Worker", "decode_gray",
           "instances_from_columns", "instances_matrix", "invalid_instance", "numeric_instance", "read_numeric_csv", "row_hashes", "rows",
           "validate_instances"]
