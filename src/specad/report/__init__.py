"""HTML reports that compare detectors on datasets: one self-contained index and a page per cube.

``config`` reads what to compare, ``runs`` runs the models, ``figures`` draws the index's plots,
``panels`` the per-cube pictures, and ``pages`` assembles the folder from the templates.
"""

from specad.report.config import ReportConfig, load_report_config, named_models
from specad.report.pages import write_report
from specad.report.panels import swir_indices
from specad.report.runs import instructive_order, verdict

__all__ = [
    "ReportConfig",
    "instructive_order",
    "load_report_config",
    "named_models",
    "swir_indices",
    "verdict",
    "write_report",
]
