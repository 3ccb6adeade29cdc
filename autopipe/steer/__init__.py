"""The steering loop and its parts.

* :mod:`~autopipe.steer.loop`: the cycle (start, submit, handle, stop), nothing else;
* :mod:`~autopipe.steer.first`, :mod:`~autopipe.steer.walkers`, :mod:`~autopipe.steer.training`:
  what can start (version 1, MD segments, training rounds) and the rules behind it;
* :mod:`~autopipe.steer.handlers`: one handler per task kind (md, embed, dft, train);
* :mod:`~autopipe.steer.stopping`: the stopping rules, over :mod:`~autopipe.steer.view`;
* :mod:`~autopipe.steer.tasks`: task rows, their states, reconciliation after a restart;
* :mod:`~autopipe.steer.queue`: per-executor priority queues in front of Parsl;
* :mod:`~autopipe.steer.selection`: which carved sub-cells are worth a DFT call;
* :mod:`~autopipe.steer.gate`: held-out labels, the gate before a hot-swap, rollbacks;
  :mod:`~autopipe.steer.probe`: the false-negative probe (labels where gamma is low, each
  version's measured error and the calibration curve);
* :mod:`~autopipe.steer.apps`, :mod:`~autopipe.steer.work`: the Parsl apps and the plain
  functions they run on workers; :mod:`~autopipe.steer.context`: what the parts share;
* :mod:`~autopipe.steer.live`: the live view and the run's log.
"""
