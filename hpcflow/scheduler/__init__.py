"""Resource scheduler adapter layer: talks to batch systems (Slurm)."""
