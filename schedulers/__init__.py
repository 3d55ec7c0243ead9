"""schedulers: AIGC *job* scheduling (which server, model and number of steps serve a job).

Simulators of published edge/cloud AIGC systems, their policies, baselines and exact optima.
Not diffusers' noise schedulers. Depends only on plain data types; trustgain imports it for
its SCHEDULE stage.
"""
