"""Device and link profiles for emulating constrained hardware (link shaping, compute slow-down).

Empty for now: the profiles issue fills it with the catalogue, the shaper and the estimator.
"""
