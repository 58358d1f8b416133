"""The gateway's routes, one module per concern: predict (/v1), oip (/v2), models and drift, health, admin."""
