"""Declarative background work: record triggers and scheduled actions (AshOban's model).

- :mod:`~chimeway.scheduling.actions`: what an action may be, and scheduled
  actions on cron;
- :mod:`~chimeway.scheduling.declare`: a record trigger's declaration and its checks;
- :mod:`~chimeway.scheduling.row_jobs`: the job that runs a trigger on one row;
- :mod:`~chimeway.scheduling.scans`: scans over the matching rows;
- :mod:`~chimeway.scheduling.triggers`: an app's record triggers.

Cron itself (ticks, scheduled notifiers) is :mod:`chimeway.cron`. This
package's top imports nothing, so its modules can sit in different layers.
"""
