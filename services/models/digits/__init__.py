"""The bundled reference model: handwritten digits (sklearn's load_digits), two models in a Triton ensemble."""
