"""What this CPU can do and which kernels are fastest on it: CPU facts (cpu.py), the per-machine cache of measured
choices (cache.py) and the measure-and-check chooser (choose.py) that training and inference ask."""
