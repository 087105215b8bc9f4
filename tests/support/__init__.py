"""What the tests and benchmarks share: builders of run, sample and training fixtures, the
`slurm_cluster` pytest fixture and the one-node SLURM cluster it starts (`python -m tests.support.cluster`)."""
