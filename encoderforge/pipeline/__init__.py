"""`encoderforge run`: a lifecycle pipeline from one YAML (config.py), stage by stage with content-hash skips
(runner.py, stages.py), ending in one self-contained HTML report (report.py)."""
