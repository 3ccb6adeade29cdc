"""The steering loop: Parsl apps, per-executor priority queues, walkers, stopping rules."""
