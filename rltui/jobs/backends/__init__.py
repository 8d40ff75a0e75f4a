"""Job backends: where a job's command runs. `local` is the keeper on this machine
(rltui.jobs.keeper); `slurm` submits a batch script with sbatch and reads the job's state from
Slurm (rltui.jobs.backends.slurm). Imports nothing here."""
