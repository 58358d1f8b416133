"""The bundled reference tabular model: diabetes progression (sklearn's load_diabetes), a linear and a
tree regressor averaged by the Triton ensemble in ``triton_models/diabetes*``. See ``model.py``.

Files: ``data.py`` (split, feature ranges, data files), ``training.py`` (fit and ONNX export),
``gates.py`` (directional expectations), ``model.py`` (the package the platform loads).
"""

from services.models.diabetes.model import Diabetes as MODEL

__all__ = ["MODEL"]
