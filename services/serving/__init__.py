"""The request path: the HTTP API (``app``, ``routes/``), the pipeline of stages (``pipeline``,
``stages``: preprocess -> Triton -> postprocess) and the drift watch on served traffic."""
