"""The client side of the mesh below the interceptors: which instance takes a call.

- pool.py: the instances of one service, kept in step with the registry and
  their connectivity; draining; applies ejections.
- picker.py: round-robin and power-of-two-choices over the candidates.
- subsets.py: a traffic policy's weighted subset (track) choice, then a picker inside it.
- outlier.py: consecutive-failure ejection as a pure state machine.
- endpoint.py: one instance's channel, calls in flight and outcomes.
- calls.py: the call objects MeshChannel hands to stubs, and the chain runner.
"""
