"""Scale-out: the same recipes as Ray worker groups (rollout actors, DeepSpeed learner ranks), weight sync,
placement and fault handling. Importing this package does not import Ray or DeepSpeed; see docs/distributed.md.

The step loop is `creditrl/trainer/loop.py` on every backend; `resources.backend: ray` makes it drive the
`RayRuntime` of `creditrl/distributed/runtime.py` (chosen in `creditrl/trainer/runtime.py`).
"""
