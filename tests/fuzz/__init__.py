"""Fuzzing the message handlers: ``decode``, the head's state machine, a node's store service
and its agent's decisions (AgentState), with generated and damaged messages.

    frames.py   raw frames for decode: garbage, cut, flipped, wrong shapes and types, huge sizes
    head.py     HeadWorld: a HeadState with nodes, workers, drivers, tasks and actors in flight
    node.py     NodeWorld: StoreService handlers over a StoreState, and AgentState (the node agent)
    values.py   adversarial field values and any message of any op
    run.py      a campaign over all three; the report (messages by op, drops by reason, crashes)

Every message goes through the real encode/decode first, so handlers see only what a peer can
really send. A crash is an exception escaping a handler (or ``schedule``/``tick``), a reply
that does not encode, an error logged with a traceback, or a broken invariant
(``HeadState.check_invariants``, ``StoreState.check``, ``AgentState.check_invariants``, the
service's own checks).

In CI: ``pytest tests/fuzz`` (test_fuzz.py: over 100,000 messages, under a minute). A longer
run, reproducible from its seed::

    python -m tests.fuzz --messages 2000000 --seed 7

A crash names its seed, world and step, and lists the latest inputs; rerun that world alone
with ``HeadWorld(seed, world, Counter(), paranoid=True).run(...)`` to check the invariants
after every input and stop at the first that breaks them.
"""
