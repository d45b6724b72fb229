"""``sedac calibrate``: thresholds with a finite-sample guarantee (Learn-then-Test), static and dynamic.

See docs/calibration.md. Light imports only here; the runtime pieces are imported lazily.
"""

from sedac.calibration.bounds import hb_pvalue, pvalue, ucb
from sedac.calibration.config import CalibrateConfig
from sedac.calibration.ltt import certify, fixed_sequence, resampling_check


def calibrate(cfg: CalibrateConfig):
    from sedac.calibration.run import calibrate as _run

    return _run(cfg)


__all__ = ["CalibrateConfig", "calibrate", "certify", "fixed_sequence", "hb_pvalue", "pvalue", "resampling_check", "ucb"]
