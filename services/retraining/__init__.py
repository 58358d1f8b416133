"""The retraining loop: events in (``listener``, ``serverless``), requests built in one place
(``requests``), runs submitted as Ray Jobs (``jobs``), each run one function per step (``run``:
validate -> train -> evaluate and gate -> publish -> load and verify -> switch), with the data
checks (``dataset``), the gate framework (``gates``) and where training runs (``training``)."""
