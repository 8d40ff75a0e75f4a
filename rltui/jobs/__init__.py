"""Jobs: specs and builders, launch and control, the keeper, the restart policy, GPU assignment
and usage. Imports nothing here: `python -m rltui.jobs.keeper` must start light."""
