"""The model registry: Triton repository layout (``repository``), lineage and run records
(``records``), and the one path versions take: publish -> load -> verify -> switch -> rollback (``publish``)."""
